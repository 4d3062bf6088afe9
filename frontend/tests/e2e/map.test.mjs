// The map in a real headless Chromium against the real beeld server.
// Run by scripts/test.sh (after `npm run build` and `cargo build --bin beeld`):
//   node --test tests/e2e/
// Screenshots go to tests/artifacts/ (gitignored).

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { api, ensureArtifacts, launchBrowser, startServer } from './harness.mjs';

const shots = ensureArtifacts();
let server;
let browser;
let page;
const pageErrors = [];

const point = (lon, lat) => ({ type: 'Point', coordinates: [lon, lat] });
const unit = (id, lon, lat, status = 'available', type = 'fire_engine') => ({
  type: 'Feature',
  id,
  geometry: point(lon, lat),
  properties: { type, status, home_region: 'VR24' },
});

/** Waits until `fn(arg)` is truthy in the page (polled every 50 ms). */
function until(fn, arg, timeout = 5000) {
  return page.waitForFunction(fn, arg, { timeout, polling: 50 });
}

const shot = (name) => page.screenshot({ path: path.join(shots, `${name}.png`) });

describe('beeld map in headless Chromium', { timeout: 150_000 }, () => {
  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
    page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    page.on('pageerror', (e) => pageErrors.push(e.message));
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('the page loads at / and goes live', async () => {
    const res = await page.goto(`${server.base}/?heartbeat=1`);
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-type'], /text\/html/);
    await until(() => window.__beeld?.status === 'live', undefined, 20_000);
    assert.match(await page.textContent('#status'), /live/);
    // GDAL and other tools still get the OGC landing page at the same URL.
    const landing = await fetch(`${server.base}/`, { headers: { Accept: 'application/json' } });
    assert.ok((await landing.json()).links.length > 0);
  });

  test('the 25 veiligheidsregio are drawn', async () => {
    await until(() => window.__beeld.rendered('regions-fill').length === 25, undefined, 20_000);
    const codes = await page.evaluate(() => window.__beeld.rendered('regions-fill').sort());
    assert.deepEqual(codes, Array.from({ length: 25 }, (_, i) => `VR${String(i + 1).padStart(2, '0')}`));
    assert.equal(await page.locator('.region-label').count(), 25);
    assert.match(await page.textContent('.maplibregl-ctrl-attrib'), /CBS \/ PDOK, CC BY 4\.0/);
    await shot('01-regions');
  });

  test('an incident posted through the API appears on the map within one second', async () => {
    const started = Date.now();
    await api(server.base, 'POST', '/collections/incidents/items', {
      type: 'Feature',
      id: 'e2e-evac-1',
      geometry: point(5.8326, 50.8652),
      properties: { type: 'evacuation', priority: 1, started_at: '2021-07-14T21:30:00+02:00' },
    });
    await until(() => window.__beeld.renderedPosition('incidents', 'e2e-evac-1') !== null, undefined, 1000);
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 1000, `took ${elapsed} ms`);
    await shot('02-incident');
  });

  test('a unit moved through the API moves on the map', async () => {
    await api(server.base, 'POST', '/collections/units/items', unit('e2e-u1', 5.7, 50.85));
    await until(() => window.__beeld.renderedPosition('units', 'e2e-u1') !== null);
    const before = await page.evaluate(() => window.__beeld.renderedPosition('units', 'e2e-u1'));
    assert.ok(Math.abs(before[0] - 5.7) < 0.01 && Math.abs(before[1] - 50.85) < 0.01, `drawn at ${before}`);
    await api(server.base, 'PUT', '/collections/units/items/e2e-u1', unit('e2e-u1', 6.0, 51.3, 'en_route'));
    await until(() => {
      const p = window.__beeld.renderedPosition('units', 'e2e-u1');
      return p && Math.abs(p[0] - 6.0) < 0.01 && Math.abs(p[1] - 51.3) < 0.01;
    });
    await shot('03-unit-moved');
  });

  test('a deleted unit disappears', async () => {
    await api(server.base, 'DELETE', '/collections/units/items/e2e-u1');
    await until(() => window.__beeld.position('units', 'e2e-u1') === null);
    await until(() => window.__beeld.renderedPosition('units', 'e2e-u1') === null);
    assert.equal(await page.evaluate(() => window.__beeld.live.picture.removals.deleted), 1);
  });

  test('a hazard is drawn as an area and a click shows its details', async () => {
    await api(server.base, 'POST', '/collections/hazards/items', {
      type: 'Feature',
      id: 'e2e-flood-1',
      geometry: {
        type: 'Polygon',
        coordinates: [[[5.75, 50.82], [5.9, 50.82], [5.9, 50.9], [5.75, 50.9], [5.75, 50.82]]],
      },
      properties: { kind: 'flood', valid_from: '2021-07-14T18:00:00Z' },
    });
    await until(() => window.__beeld.rendered('hazards-fill').includes('e2e-flood-1'));
    // Click the incident: details with feed, region and the nearest-units list.
    const xy = await page.evaluate(() => window.__beeld.project([5.8326, 50.8652]));
    const box = await page.locator('#map').boundingBox();
    await page.mouse.click(box.x + xy.x, box.y + xy.y);
    await page.waitForSelector('#info:not([hidden])');
    const info = await page.textContent('#info');
    assert.match(info, /e2e-evac-1/);
    assert.match(info, /e2e/); // the source feed
    assert.match(info, /Zuid-Limburg \(VR24\)/); // the region it lies in
    // The nearest-units list, or (join endpoints not on this server) a clear "not available".
    await page.waitForSelector('#join [data-join]');
    await shot('04-details');
  });

  test('the map follows the viewport: units outside leave and come back', async () => {
    await api(server.base, 'POST', '/collections/units/items', unit('e2e-gron', 6.57, 53.22, 'on_scene', 'police'));
    await until(() => window.__beeld.position('units', 'e2e-gron') !== null);
    await page.evaluate(() => window.__beeld.map.jumpTo({ center: [5.85, 50.87], zoom: 10 }));
    await until(() => window.__beeld.position('units', 'e2e-gron') === null);
    assert.ok((await page.evaluate(() => window.__beeld.live.picture.removals.left_viewport)) >= 1);
    assert.ok(await page.evaluate(() => window.__beeld.position('incidents', 'e2e-evac-1') !== null));
    await shot('05-zoomed-limburg');
    await page.evaluate(() => window.__beeld.map.jumpTo({ center: [5.3, 52.2], zoom: 6.5 }));
    await until(() => window.__beeld.position('units', 'e2e-gron') !== null);
  });

  test('clicking a region selects and highlights it', async () => {
    await page.click('#info-close');
    const xy = await page.evaluate(() => window.__beeld.project([5.12, 52.09])); // Utrecht
    const box = await page.locator('#map').boundingBox();
    await page.mouse.click(box.x + xy.x, box.y + xy.y);
    await until(() => window.__beeld.selectedRegion === 'VR09');
    await until(() => window.__beeld.rendered('regions-selected').join() === 'VR09');
    assert.match(await page.textContent('#info'), /Utrecht/);
  });

  test('English labels on request', async () => {
    await page.click('#lang');
    assert.match(await page.textContent('#title'), /National operational picture/);
    assert.match(await page.textContent('#layers'), /Units/);
    await page.click('#lang');
    assert.match(await page.textContent('#title'), /Landelijk operationeel beeld/);
  });

  test('a server restart shows reconnecting, then live again', async () => {
    const port = server.port;
    await server.stop();
    await until(() => ['reconnecting', 'stale'].includes(window.__beeld.status), undefined, 5000);
    const text = await page.textContent('#status');
    assert.doesNotMatch(text, /● live/);
    await shot('06-reconnecting');
    server = await startServer({ port });
    // Feeds write to the new server before the client is back, so its seq
    // passes the client's `since`: a resume would be honoured against a
    // different history. The client must notice the restart and start afresh.
    const fresh = Array.from({ length: 20 }, (_, i) => unit(`e2e-new-${i}`, 5 + i * 0.05, 52, 'available'));
    await api(server.base, 'POST', '/collections/units/items', { type: 'FeatureCollection', features: fresh });
    await api(server.base, 'POST', '/collections/units/items', { type: 'FeatureCollection', features: fresh });
    await until(() => window.__beeld.status === 'live', undefined, 20_000);
    // The restarted server holds none of the old features: they must not linger.
    await until(() => window.__beeld.count('units') === 20);
    assert.equal(await page.evaluate(() => window.__beeld.count('incidents')), 0);
    assert.equal(await page.evaluate(() => window.__beeld.count('hazards')), 0);
    await api(server.base, 'POST', '/collections/incidents/items', {
      type: 'Feature',
      id: 'e2e-after-restart',
      geometry: point(5.3, 52.2),
      properties: { type: 'fire', priority: 2, started_at: '2021-07-14T21:30:00+02:00' },
    });
    await until(() => window.__beeld.renderedPosition('incidents', 'e2e-after-restart') !== null, undefined, 2000);
    await shot('07-live-again');
  });

  test('a silent server shows stale since HH:MM:SS, then live again', async () => {
    // SIGSTOP: the connection stays open but nothing arrives (heartbeat 1 s).
    process.kill(server.proc.pid, 'SIGSTOP');
    try {
      await until(() => window.__beeld.status === 'stale', undefined, 8000);
      assert.match(await page.textContent('#status'), /verouderd sinds \d\d:\d\d:\d\d/);
      await shot('07b-stale');
    } finally {
      process.kill(server.proc.pid, 'SIGCONT');
    }
    await until(() => window.__beeld.status === 'live', undefined, 20_000);
    assert.ok(await page.evaluate(() => window.__beeld.position('incidents', 'e2e-after-restart') !== null));
  });

  test('tablet layout at 768 px wide', async () => {
    await page.setViewportSize({ width: 768, height: 1024 });
    await until(() => window.__beeld.map.getCanvas().clientWidth <= 768);
    const bar = await page.locator('#bar').boundingBox();
    assert.ok(bar.width <= 768);
    const btn = await page.locator('#lang').boundingBox();
    assert.ok(btn.height >= 44, `touch target ${btn.height}px`);
    await shot('08-tablet-768');
  });

  test('4K wall display: text and controls scale up', async () => {
    await page.setViewportSize({ width: 3840, height: 2160 });
    await until(() => window.__beeld.map.getCanvas().clientWidth > 3000, undefined, 10_000);
    const rootPx = await page.evaluate(() => parseFloat(getComputedStyle(document.documentElement).fontSize));
    assert.ok(rootPx >= 28, `root font ${rootPx}px`);
    const btn = await page.locator('#lang').boundingBox();
    assert.ok(btn.height >= 80, `button ${btn.height}px`);
    await page.waitForTimeout(1500);
    await shot('09-wall-4k');
    assert.deepEqual(pageErrors, []);
  });
});

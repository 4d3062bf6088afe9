// Frame budget of the web client under load: 10,000 units, each moving once
// a second (10 POSTs of 1,000 moves per second), shown on the whole-country
// map in headless Chromium. Prints a JSON summary; see BENCHMARKS.md.
//
//   cd frontend && npm run build && \
//   BEELD_BIN=../target/release/beeld node tests/bench/frames.mjs [units] [seconds]

import { api, launchBrowser, startServer } from '../e2e/harness.mjs';

const UNITS = Number(process.argv[2] ?? 10_000);
const SECONDS = Number(process.argv[3] ?? 15);
const BATCHES_PER_SECOND = 10;

// Deterministic positions over the Netherlands.
let seed = 42;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
const TYPES = ['fire_engine', 'ambulance', 'police', 'rescue', 'command', 'other'];
const STATUSES = ['available', 'en_route', 'on_scene', 'out_of_service'];
const units = Array.from({ length: UNITS }, (_, i) => ({
  id: `bench-${i}`,
  lon: 4.0 + rand() * 2.8,
  lat: 51.4 + rand() * 1.6,
  type: TYPES[i % TYPES.length],
  status: STATUSES[i % STATUSES.length],
}));
const feature = (u) => ({
  type: 'Feature',
  id: u.id,
  geometry: { type: 'Point', coordinates: [Number(u.lon.toFixed(6)), Number(u.lat.toFixed(6))] },
  properties: { type: u.type, status: u.status, home_region: 'VR09' },
});
const batch = (list) => ({ type: 'FeatureCollection', features: list.map(feature) });

const pct = (xs, p) => {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(100 * s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]) / 100;
};
const summary = (xs) => ({ n: xs.length, p50: pct(xs, 50), p95: pct(xs, 95), p99: pct(xs, 99), max: pct(xs, 100) });

async function measure(page, seconds) {
  return page.evaluate(async (ms) => {
    const b = window.__beeld;
    const frames = [];
    const longTasks = [];
    const obs = new PerformanceObserver((l) => l.getEntries().forEach((e) => longTasks.push(e.duration)));
    obs.observe({ type: 'longtask', buffered: false });
    let renders = 0;
    const onRender = () => renders++;
    b.map.on('render', onRender);
    const flushStart = b.perf.flushMs.length;
    const flushesStart = b.perf.flushes;
    const msgsStart = b.perf.messagesApplied;
    const handleStart = b.live.stats.handleMs;
    const start = performance.now();
    let last = start;
    await new Promise((resolve) => {
      const tick = (now) => {
        frames.push(now - last);
        last = now;
        if (now - start < ms) requestAnimationFrame(tick);
        else resolve();
      };
      requestAnimationFrame(tick);
    });
    obs.disconnect();
    b.map.off('render', onRender);
    const elapsed = (performance.now() - start) / 1000;
    return {
      elapsed,
      frames: frames.slice(1),
      flushMs: b.perf.flushMs.slice(flushStart),
      flushes: b.perf.flushes - flushesStart,
      messages: b.perf.messagesApplied - msgsStart,
      handleMs: b.live.stats.handleMs - handleStart,
      mapRendersPerSecond: renders / elapsed,
      longTasks,
      units: b.count('units'),
      connection: { status: b.status, ...b.live.stats },
    };
  }, seconds * 1000);
}

const server = await startServer();
const browser = await launchBrowser();
try {
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  await page.goto(`${server.base}/?heartbeat=10`);
  await page.waitForFunction(() => window.__beeld?.status === 'live', undefined, { timeout: 30_000 });
  for (let i = 0; i < UNITS; i += 5000) await api(server.base, 'POST', '/collections/units/items', batch(units.slice(i, i + 5000)));
  await page.waitForFunction((n) => window.__beeld.count('units') === n, UNITS, { timeout: 60_000, polling: 200 });
  await page.waitForTimeout(2000);
  const idle = await measure(page, 5);

  // Load: every 100 ms, move the next tenth of the units by up to ~150 m.
  const perBatch = Math.ceil(UNITS / BATCHES_PER_SECOND);
  let cursor = 0;
  let posted = 0;
  let postMs = [];
  let running = true;
  const loader = (async () => {
    let next = Date.now();
    while (running) {
      const slice = units.slice(cursor, cursor + perBatch);
      cursor = (cursor + perBatch) % UNITS;
      for (const u of slice) {
        u.lon += (rand() - 0.5) * 0.004;
        u.lat += (rand() - 0.5) * 0.0025;
      }
      const t0 = Date.now();
      await api(server.base, 'POST', '/collections/units/items', batch(slice));
      postMs.push(Date.now() - t0);
      posted += slice.length;
      next += 1000 / BATCHES_PER_SECOND;
      const wait = next - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  // Optional: BENCH_HIDE=layer,layer hides map layers (to split render cost from the rest).
  if (process.env.BENCH_HIDE)
    await page.evaluate((ls) => ls.split(',').forEach((l) => window.__beeld.map.setLayoutProperty(l, 'visibility', 'none')), process.env.BENCH_HIDE);
  await page.waitForTimeout(3000); // warm up
  const postedBefore = posted;
  const loaded = await measure(page, SECONDS);
  const movesPerSecond = (posted - postedBefore) / loaded.elapsed;
  running = false;
  await loader;

  const report = (r) => ({
    seconds: Math.round(r.elapsed * 10) / 10,
    units: r.units,
    connection: r.connection,
    frameIntervalMs: summary(r.frames),
    framesOver50ms: r.frames.filter((x) => x > 50).length,
    flushMsPerFrame: summary(r.flushMs),
    flushesPerSecond: Math.round((r.flushes / r.elapsed) * 10) / 10,
    messagesPerSecond: Math.round((r.messages / r.elapsed) * 10) / 10,
    // Parsing and applying the messages to the client picture, per second of wall time.
    parseApplyMsPerSecond: Math.round((r.handleMs / r.elapsed) * 10) / 10,
    mapRendersPerSecond: Math.round(r.mapRendersPerSecond * 10) / 10,
    longTasks: { count: r.longTasks.length, totalMs: Math.round(r.longTasks.reduce((a, b) => a + b, 0)), ...summary(r.longTasks) },
  });
  console.log(
    JSON.stringify(
      {
        viewport: '1600x1000, whole country',
        idle: report(idle),
        load: { unitMovesPerSecond: Math.round(movesPerSecond), postBatchMs: summary(postMs), ...report(loaded) },
      },
      null,
      2,
    ),
  );
} finally {
  await browser.close();
  await server.stop();
}

// The beeld map: base map from beeld's own data (NL outline, provinces,
// regions, municipalities), live incidents, units and hazards over /ws,
// rendered once per animation frame.

import maplibregl, { type GeoJSONSource, type MapGeoJSONFeature } from 'maplibre-gl';
import 'maplibre-gl/dist/maplibre-gl.css';
import './style.css';
import { LiveClient, browserEnv, type BBox, type Status } from './live';
import type { Feature } from './picture';
import { t, setLang, getLang, type Lang } from './i18n';
import {
  HAZARD_COLOUR,
  HAZARD_KINDS,
  PRIORITIES,
  STATUS_COLOUR,
  UNIT_STATUSES,
  UNIT_TYPES,
  incidentIcon,
  unitIcon,
  unitIconName,
} from './symbols';
import { fetchJoin, joinUrls } from './joins';

const LIVE = ['incidents', 'units', 'hazards'] as const;
type LiveCollection = (typeof LIVE)[number];

const params = new URLSearchParams(location.search);
const token = params.get('access_token');
const authHeaders: Record<string, string> = token ? { Authorization: `Bearer ${token}` } : {};
const heartbeatMs = 1000 * Number(params.get('heartbeat') ?? 10);
const externalStyle = params.get('basemap');
setLang((params.get('lang') ?? localStorage.getItem('beeld.lang') ?? 'nl') === 'en' ? 'en' : 'nl');

// ---------- DOM ----------

const $ = <T extends HTMLElement>(sel: string) => document.querySelector(sel) as T;
const statusEl = $('#status');
const infoEl = $('#info');
const infoBody = $('#info-body');

// ---------- map ----------

// Open the side panel before the map measures its container.
if (innerWidth > 1000) document.body.classList.add('panel-open');

const emptyFc = (): GeoJSON.FeatureCollection => ({ type: 'FeatureCollection', features: [] });

const localStyle: maplibregl.StyleSpecification = {
  version: 8,
  sources: {},
  layers: [{ id: 'background', type: 'background', paint: { 'background-color': '#d4e4ee' } }],
};

const map = new maplibregl.Map({
  container: 'map',
  style: externalStyle ?? localStyle,
  bounds: [
    [3.2, 50.7],
    [7.3, 53.6],
  ],
  maxBounds: [
    [-2, 48],
    [13, 56],
  ],
  dragRotate: false,
  pitchWithRotate: false,
  attributionControl: false,
  fadeDuration: 0,
});
map.touchZoomRotate.disableRotation();
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), 'bottom-right');
map.addControl(new maplibregl.ScaleControl({ unit: 'metric' }), 'bottom-left');
const attribution = new maplibregl.AttributionControl({ compact: false, customAttribution: t('attribution') });
map.addControl(attribution, 'bottom-right');

function addLayers(): void {
  for (const type of UNIT_TYPES)
    for (const status of UNIT_STATUSES)
      map.addImage(unitIconName(type, status), imageData(unitIcon(type, status)), { pixelRatio: 2 });
  for (const p of PRIORITIES) map.addImage(`incident-${p}`, imageData(incidentIcon(p)), { pixelRatio: 2 });

  const attributionCbs = 'CBS / PDOK, CC BY 4.0';
  map.addSource('nl', { type: 'geojson', data: '/basemap/nederland.geojson', attribution: attributionCbs });
  map.addSource('provinces', { type: 'geojson', data: '/basemap/provincies.geojson' });
  map.addSource('regions', { type: 'geojson', data: emptyFc() });
  map.addSource('municipalities', { type: 'geojson', data: emptyFc() });
  for (const c of LIVE) map.addSource(c, { type: 'geojson', data: emptyFc() });

  // Land colour, unless an external base map draws the land.
  map.addLayer({
    id: 'nl-fill',
    type: 'fill',
    source: 'nl',
    paint: { 'fill-color': '#fbfaf6', 'fill-opacity': externalStyle ? 0 : 1 },
  });
  map.addLayer({
    id: 'regions-fill',
    type: 'fill',
    source: 'regions',
    paint: { 'fill-color': '#7d8ea3', 'fill-opacity': 0.06 },
  });
  map.addLayer({
    id: 'regions-selected',
    type: 'fill',
    source: 'regions',
    filter: ['==', ['get', 'code'], ''],
    paint: { 'fill-color': '#ffd400', 'fill-opacity': 0.25 },
  });
  map.addLayer({
    id: 'municipalities-line',
    type: 'line',
    source: 'municipalities',
    minzoom: 8,
    paint: { 'line-color': '#9aa3ad', 'line-width': 0.8 },
  });
  map.addLayer({
    id: 'provinces-line',
    type: 'line',
    source: 'provinces',
    paint: { 'line-color': '#5d6b7a', 'line-width': 1, 'line-dasharray': [3, 2] },
  });
  map.addLayer({
    id: 'regions-line',
    type: 'line',
    source: 'regions',
    paint: { 'line-color': '#2d3a4a', 'line-width': ['interpolate', ['linear'], ['zoom'], 6, 1.2, 11, 2.5] },
  });
  map.addLayer({
    id: 'regions-selected-line',
    type: 'line',
    source: 'regions',
    filter: ['==', ['get', 'code'], ''],
    paint: { 'line-color': '#b38f00', 'line-width': 4 },
  });
  map.addLayer({ id: 'nl-line', type: 'line', source: 'nl', paint: { 'line-color': '#2d3a4a', 'line-width': 1.5 } });
  const hazardColour: maplibregl.ExpressionSpecification = [
    'match',
    ['get', 'kind'],
    ...HAZARD_KINDS.flatMap((k) => [k, HAZARD_COLOUR[k]]),
    HAZARD_COLOUR.other,
  ] as unknown as maplibregl.ExpressionSpecification;
  map.addLayer({
    id: 'hazards-fill',
    type: 'fill',
    source: 'hazards',
    paint: { 'fill-color': hazardColour, 'fill-opacity': 0.3 },
  });
  map.addLayer({
    id: 'hazards-line',
    type: 'line',
    source: 'hazards',
    paint: { 'line-color': hazardColour, 'line-width': 2.5 },
  });
  map.addLayer({
    id: 'units',
    type: 'symbol',
    source: 'units',
    layout: {
      'icon-image': ['concat', 'unit-', ['get', 'type'], '-', ['get', 'status']],
      'icon-size': ['interpolate', ['linear'], ['zoom'], 5, 0.45, 10, 0.8, 14, 1.1],
      'icon-allow-overlap': true,
      'icon-ignore-placement': true,
    },
  });
  map.addLayer({
    id: 'incidents',
    type: 'symbol',
    source: 'incidents',
    layout: {
      'icon-image': ['concat', 'incident-', ['to-string', ['get', 'priority']]],
      'icon-size': ['interpolate', ['linear'], ['zoom'], 5, 0.9, 10, 1.2, 14, 1.5],
      'icon-allow-overlap': true,
      'icon-ignore-placement': true,
      'symbol-sort-key': ['get', 'priority'],
    },
  });
}

function imageData(cv: HTMLCanvasElement): ImageData {
  return cv.getContext('2d')!.getImageData(0, 0, cv.width, cv.height);
}

// ---------- reference layers ----------

let regions: GeoJSON.FeatureCollection = emptyFc();
const regionMarkers: maplibregl.Marker[] = [];

async function getJson(url: string): Promise<GeoJSON.FeatureCollection> {
  const res = await fetch(url, { headers: { ...authHeaders, Accept: 'application/geo+json' } });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

async function loadReference(): Promise<void> {
  regions = await getJson('/collections/regions/items?limit=100');
  (map.getSource('regions') as GeoJSONSource).setData(regions);
  for (const f of regions.features) {
    const el = document.createElement('div');
    el.className = 'region-label';
    el.textContent = String(f.properties?.name ?? f.id);
    regionMarkers.push(new maplibregl.Marker({ element: el }).setLngLat(labelPoint(f.geometry)).addTo(map));
  }
  const municipalities = await getJson('/collections/municipalities/items?limit=1000');
  (map.getSource('municipalities') as GeoJSONSource).setData(municipalities);
  beeld.reference = { regions: regions.features.length, municipalities: municipalities.features.length };
}

/** A label point: the centroid of the largest outer ring. */
function labelPoint(g: GeoJSON.Geometry): [number, number] {
  const polys = g.type === 'Polygon' ? [g.coordinates] : g.type === 'MultiPolygon' ? g.coordinates : [];
  let best: [number, number] = [5.3, 52.1];
  let bestArea = -1;
  for (const poly of polys) {
    const ring = poly[0];
    let a = 0;
    let cx = 0;
    let cy = 0;
    for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
      const f = ring[j][0] * ring[i][1] - ring[i][0] * ring[j][1];
      a += f;
      cx += (ring[j][0] + ring[i][0]) * f;
      cy += (ring[j][1] + ring[i][1]) * f;
    }
    if (Math.abs(a) > bestArea && a !== 0) {
      bestArea = Math.abs(a);
      best = [cx / (3 * a), cy / (3 * a)];
    }
  }
  return best;
}

function inRing(p: number[], ring: number[][]): boolean {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i];
    const [xj, yj] = ring[j];
    if (yi > p[1] !== yj > p[1] && p[0] < ((xj - xi) * (p[1] - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** The veiligheidsregio a point lies in, from the loaded boundaries. */
function regionOf(p: number[]): string | null {
  for (const f of regions.features) {
    const g = f.geometry;
    const polys = g.type === 'Polygon' ? [g.coordinates] : g.type === 'MultiPolygon' ? g.coordinates : [];
    for (const poly of polys)
      if (inRing(p, poly[0] as number[][]) && !poly.slice(1).some((h) => inRing(p, h as number[][])))
        return `${f.properties?.name} (${f.properties?.code ?? f.id})`;
  }
  return null;
}

// ---------- live ----------

const dirty = new Set<LiveCollection>();
let frameQueued = false;
const perf = { flushes: 0, flushMs: [] as number[], messagesApplied: 0 };

function scheduleFlush(): void {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(flush);
}

/** Once per animation frame: one `setData` per changed collection. */
function flush(): void {
  frameQueued = false;
  const t0 = performance.now();
  for (const c of dirty) {
    const src = map.getSource(c) as GeoJSONSource | undefined;
    if (!src) continue;
    src.setData({
      type: 'FeatureCollection',
      features: Array.from(live.picture.features(c).values()) as unknown as GeoJSON.Feature[],
    });
  }
  dirty.clear();
  perf.flushes += 1;
  perf.flushMs.push(performance.now() - t0);
  if (perf.flushMs.length > 10_000) perf.flushMs.splice(0, 5_000);
  updateCounts();
}

const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws${
  token ? `?access_token=${encodeURIComponent(token)}` : ''
}`;
const live = new LiveClient(
  {
    url: wsUrl,
    collections: [...LIVE],
    heartbeatMs,
    onApplied: (applied) => {
      perf.messagesApplied += 1;
      for (const c of applied.dirty) dirty.add(c as LiveCollection);
      if (applied.dirty.size > 0 && styleReady) scheduleFlush();
    },
    onStatus: showStatus,
    onError: (m) => console.warn('beeld live:', m),
  },
  browserEnv(),
);

function viewportBox(): BBox {
  const b = map.getBounds();
  const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
  const r = (v: number) => Math.round(v * 1e5) / 1e5;
  return [
    r(clamp(b.getWest(), -180, 180)),
    r(clamp(b.getSouth(), -90, 90)),
    r(clamp(b.getEast(), -180, 180)),
    r(clamp(b.getNorth(), -90, 90)),
  ];
}

function hhmmss(ms: number): string {
  return new Date(ms).toLocaleTimeString('nl-NL', { hour12: false });
}

function showStatus(s: Status = live.status): void {
  statusEl.dataset.state = s.kind;
  statusEl.textContent =
    s.kind === 'live'
      ? `● ${t('live')}`
      : s.kind === 'stale'
        ? `⚠ ${t('staleSince')} ${hhmmss(s.lastHeard)}`
        : s.kind === 'reconnecting'
          ? `↻ ${t('reconnecting')}${s.lastHeard ? ` (${t('lastHeard')} ${hhmmss(s.lastHeard)})` : ''}`
          : `… ${t('connecting')}`;
  document.body.classList.toggle('offline', s.kind !== 'live');
  // Never show stale data as live: dim the live layers while not live.
  if (styleReady) {
    const o = s.kind === 'live' ? 1 : 0.35;
    for (const id of ['units', 'incidents']) map.setPaintProperty(id, 'icon-opacity', o);
    map.setPaintProperty('hazards-fill', 'fill-opacity', 0.3 * o);
  }
}

function updateCounts(): void {
  for (const c of LIVE) {
    const el = document.querySelector(`[data-count="${c}"]`);
    if (el) el.textContent = String(live.picture.count(c));
  }
}

// ---------- UI: toggles, legend, language, details ----------

const toggles: { key: string; layers: string[]; markers?: boolean }[] = [
  { key: 'incidents', layers: ['incidents'] },
  { key: 'units', layers: ['units'] },
  { key: 'hazards', layers: ['hazards-fill', 'hazards-line'] },
  { key: 'regions', layers: ['regions-fill', 'regions-line', 'regions-selected', 'regions-selected-line'] },
  { key: 'regionLabels', layers: [], markers: true },
  { key: 'municipalities', layers: ['municipalities-line'] },
  { key: 'provinces', layers: ['provinces-line'] },
];
const visible: Record<string, boolean> = Object.fromEntries(toggles.map((x) => [x.key, true]));

function renderPanel(): void {
  document.documentElement.lang = getLang();
  $('#title').textContent = t('title');
  $('#lang').textContent = t('language');
  $('#layers-title').textContent = t('layers');
  $('#legend-title').textContent = t('legend');
  $('#info-close').setAttribute('aria-label', t('close'));
  attribution._updateAttributions?.();
  const layersEl = $('#layers');
  layersEl.innerHTML = '';
  for (const tg of toggles) {
    const label = document.createElement('label');
    label.className = 'toggle';
    const box = document.createElement('input');
    box.type = 'checkbox';
    box.checked = visible[tg.key];
    box.dataset.layer = tg.key;
    box.addEventListener('change', () => {
      visible[tg.key] = box.checked;
      applyVisibility();
    });
    const count = LIVE.includes(tg.key as LiveCollection)
      ? ` <span class="count" data-count="${tg.key}">${live.picture.count(tg.key)}</span>`
      : '';
    label.append(box);
    label.insertAdjacentHTML('beforeend', `<span>${t(tg.key)}${count}</span>`);
    layersEl.append(label);
  }
  const legend = $('#legend');
  legend.innerHTML = '';
  const row = (img: string, text: string) => `<div class="legend-row"><img alt="" src="${img}"><span>${text}</span></div>`;
  let html = `<h3>${t('units')} · ${t('status')}</h3>`;
  html += UNIT_STATUSES.map((s) => row(unitIcon('ambulance', s).toDataURL(), t(s))).join('');
  html += `<h3>${t('units')} · ${t('type')}</h3>`;
  html += UNIT_TYPES.map((ty) => row(unitIcon(ty, 'available').toDataURL(), t(ty))).join('');
  html += `<h3>${t('incidents')} · ${t('priority')}</h3>`;
  html += PRIORITIES.map((p) => row(incidentIcon(p).toDataURL(), t(`p${p}`))).join('');
  html += `<h3>${t('hazards')}</h3>`;
  html += HAZARD_KINDS.map(
    (k) =>
      `<div class="legend-row"><span class="swatch" style="background:${HAZARD_COLOUR[k]}55;border-color:${HAZARD_COLOUR[k]}"></span><span>${t(k)}</span></div>`,
  ).join('');
  html += `<p class="attribution-note">${t('attribution')}</p>`;
  legend.innerHTML = html;
  showStatus();
  if (selected) showDetails(selected.collection, selected.id);
}

function applyVisibility(): void {
  for (const tg of toggles) {
    for (const id of tg.layers) if (map.getLayer(id)) map.setLayoutProperty(id, 'visibility', visible[tg.key] ? 'visible' : 'none');
    if (tg.markers) for (const m of regionMarkers) m.getElement().style.display = visible[tg.key] ? '' : 'none';
  }
}

let selected: { collection: string; id: string } | null = null;
let selectedRegion = '';

function selectRegion(code: string): void {
  selectedRegion = code;
  for (const id of ['regions-selected', 'regions-selected-line'])
    map.setFilter(id, ['==', ['get', 'code'], code]);
}

function esc(v: unknown): string {
  return String(v).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function showDetails(collection: string, id: string): void {
  selected = { collection, id };
  let f: Feature | GeoJSON.Feature | undefined = LIVE.includes(collection as LiveCollection)
    ? live.picture.get(collection, id)
    : regions.features.find((r) => String(r.id ?? r.properties?.code) === id);
  if (!f) {
    infoBody.innerHTML = `<p>${esc(id)}: ${t('noneFound')}</p>`;
    return;
  }
  const p = (f.properties ?? {}) as Record<string, unknown>;
  const point = f.geometry?.type === 'Point' ? (f.geometry.coordinates as number[]) : null;
  const region = collection === 'regions' ? `${p.name} (${p.code})` : point ? regionOf(point) : null;
  const lines: [string, unknown][] = [
    [t('type'), t(String(p.type ?? p.kind ?? collection))],
  ];
  if (p.status) lines.push([t('status'), t(String(p.status))]);
  if (p.priority) lines.push([t('priority'), p.priority]);
  const when = (v: unknown) => new Date(String(v)).toLocaleString(getLang() === 'nl' ? 'nl-NL' : 'en-GB');
  if (p.received_at) lines.push([t('lastUpdate'), when(p.received_at)]);
  if (p.observed_at) lines.push([t('observed'), when(p.observed_at)]);
  if (p.feed) lines.push([t('feed'), p.feed]);
  if (region) lines.push([t('region'), region]);
  const shown = new Set(['__id', 'type', 'kind', 'status', 'priority', 'received_at', 'observed_at', 'feed']);
  for (const [k, v] of Object.entries(p)) if (!shown.has(k)) lines.push([k, typeof v === 'object' ? JSON.stringify(v) : v]);
  infoBody.innerHTML =
    `<h2>${esc(t(collection))}: ${esc(id)}</h2><table>` +
    lines.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join('') +
    '</table><div id="join"></div>';
  infoEl.hidden = false;
  if (collection === 'hazards') showJoin(t('unitsInside'), joinUrls.unitsInHazard(id));
  if (collection === 'incidents') showJoin(t('nearestAvailable'), joinUrls.nearestUnits(id, 5));
}

async function showJoin(title: string, url: string): Promise<void> {
  const el = $('#join');
  el.innerHTML = `<h3>${esc(title)}</h3><p>${t('loading')}</p>`;
  const rows = await fetchJoin(url, authHeaders);
  if (!el.isConnected) return;
  el.innerHTML =
    `<h3>${esc(title)}</h3>` +
    (rows === null
      ? `<p class="muted" data-join="unavailable">${t('notAvailable')}</p>`
      : rows.length === 0
        ? `<p data-join="none">${t('noneFound')}</p>`
        : '<ul data-join="list">' +
          rows
            .map(
              (r) =>
                `<li>${esc(r.id)} · ${esc(t(r.type ?? ''))} · ${esc(t(r.status ?? ''))}${
                  r.distance_m !== undefined ? ` · ${(r.distance_m / 1000).toFixed(1)} km` : ''
                }</li>`,
            )
            .join('') +
          '</ul>');
}

function onClick(e: maplibregl.MapMouseEvent): void {
  // A generous box around the tap: large touch targets.
  const pad = matchMedia('(pointer: coarse)').matches ? 22 : 8;
  const box: [maplibregl.PointLike, maplibregl.PointLike] = [
    [e.point.x - pad, e.point.y - pad],
    [e.point.x + pad, e.point.y + pad],
  ];
  const order = ['incidents', 'units', 'hazards-fill'];
  const hits = map.queryRenderedFeatures(box, { layers: order.filter((l) => map.getLayer(l)) });
  hits.sort((a: MapGeoJSONFeature, b: MapGeoJSONFeature) => order.indexOf(a.layer.id) - order.indexOf(b.layer.id));
  if (hits.length > 0) {
    const h = hits[0];
    showDetails(h.source, String(h.properties.__id ?? h.id));
    return;
  }
  const region = map.queryRenderedFeatures(e.point, { layers: ['regions-fill'] })[0];
  if (region) {
    const code = String(region.properties.code);
    selectRegion(code);
    showDetails('regions', code);
  }
}

// ---------- start ----------

let styleReady = false;

map.on('load', () => {
  addLayers();
  styleReady = true;
  applyVisibility();
  showStatus();
  for (const c of LIVE) if (live.picture.count(c) > 0) dirty.add(c);
  scheduleFlush();
  loadReference().catch((e) => console.error('beeld: reference layers', e));
  live.setViewport(viewportBox());
});
map.on('moveend', () => live.setViewport(viewportBox()));
map.on('move', () => {
  if (styleReady) live.setViewport(viewportBox());
});
map.on('click', onClick);
for (const l of ['incidents', 'units', 'hazards-fill', 'regions-fill']) {
  map.on('mouseenter', l, () => (map.getCanvas().style.cursor = 'pointer'));
  map.on('mouseleave', l, () => (map.getCanvas().style.cursor = ''));
}

$('#lang').addEventListener('click', () => {
  const next: Lang = getLang() === 'nl' ? 'en' : 'nl';
  setLang(next);
  localStorage.setItem('beeld.lang', next);
  attribution.options.customAttribution = t('attribution');
  renderPanel();
});
$('#info-close').addEventListener('click', () => {
  infoEl.hidden = true;
  selected = null;
});
$('#panel-toggle').addEventListener('click', () => document.body.classList.toggle('panel-open'));

renderPanel();

// ---------- test and benchmark hooks ----------

const beeld = {
  map,
  live,
  perf,
  reference: { regions: 0, municipalities: 0 },
  get status() {
    return live.status.kind;
  },
  get statusText() {
    return statusEl.textContent;
  },
  get seq() {
    return live.picture.seq;
  },
  get selectedRegion() {
    return selectedRegion;
  },
  count: (c: string) => live.picture.count(c),
  position: (c: string, id: string) => {
    const f = live.picture.get(c, id);
    return f && f.geometry.type === 'Point' ? (f.geometry.coordinates as number[]) : null;
  },
  /** Ids of features of `layer` the map has actually drawn in the current view. */
  rendered: (layer: string) => {
    if (!map.getLayer(layer)) return [];
    const ids = map.queryRenderedFeatures({ layers: [layer] }).map((f) => String(f.properties.code ?? f.properties.__id ?? f.id));
    return [...new Set(ids)];
  },
  /** Where the map has drawn feature `id` of `layer` (from the rendered tiles), or null. */
  renderedPosition: (layer: string, id: string) => {
    if (!map.getLayer(layer)) return null;
    const f = map.queryRenderedFeatures({ layers: [layer] }).find((x) => x.properties.__id === id);
    return f && f.geometry.type === 'Point' ? f.geometry.coordinates : null;
  },
  /** Screen position of a rendered live feature, for click tests. */
  project: (lngLat: [number, number]) => map.project(lngLat),
  showDetails,
};
(window as unknown as { __beeld: typeof beeld }).__beeld = beeld;

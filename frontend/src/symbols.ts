// Symbology drawn on canvas at start (no sprite or glyph download): unit
// type by shape, unit status by colour, incident priority by colour and
// size. The same images feed the map and the legend.

export const UNIT_TYPES = ['fire_engine', 'ambulance', 'police', 'rescue', 'command', 'other'] as const;
export const UNIT_STATUSES = ['available', 'en_route', 'on_scene', 'out_of_service'] as const;
export const HAZARD_KINDS = ['wildfire', 'flood', 'chemical', 'other'] as const;
export const PRIORITIES = [1, 2, 3] as const;

/** Status colours chosen to stay apart in daylight and for colour-blind readers (with shapes). */
export const STATUS_COLOUR: Record<string, string> = {
  available: '#1a9641',
  en_route: '#1f78d1',
  on_scene: '#e66101',
  out_of_service: '#6b6b6b',
};
export const PRIORITY_COLOUR: Record<number, string> = { 1: '#d7191c', 2: '#f28e00', 3: '#e6c200' };
export const HAZARD_COLOUR: Record<string, string> = {
  wildfire: '#e4572e',
  flood: '#2b83ba',
  chemical: '#9b30d9',
  other: '#8c6d31',
};

const SIZE = 40;

function path(ctx: CanvasRenderingContext2D, type: string): void {
  const c = SIZE / 2;
  const r = SIZE / 2 - 5;
  ctx.beginPath();
  switch (type) {
    case 'fire_engine': // square
      ctx.rect(c - r * 0.85, c - r * 0.85, r * 1.7, r * 1.7);
      break;
    case 'ambulance': // circle
      ctx.arc(c, c, r, 0, Math.PI * 2);
      break;
    case 'police': // diamond
      ctx.moveTo(c, c - r);
      ctx.lineTo(c + r, c);
      ctx.lineTo(c, c + r);
      ctx.lineTo(c - r, c);
      ctx.closePath();
      break;
    case 'rescue': // triangle
      ctx.moveTo(c, c - r);
      ctx.lineTo(c + r, c + r * 0.8);
      ctx.lineTo(c - r, c + r * 0.8);
      ctx.closePath();
      break;
    case 'command': // star
      for (let i = 0; i < 10; i++) {
        const a = -Math.PI / 2 + (i * Math.PI) / 5;
        const rr = i % 2 ? r * 0.45 : r;
        ctx.lineTo(c + rr * Math.cos(a), c + rr * Math.sin(a));
      }
      ctx.closePath();
      break;
    default: // hexagon
      for (let i = 0; i < 6; i++) {
        const a = (i * Math.PI) / 3;
        ctx.lineTo(c + r * Math.cos(a), c + r * Math.sin(a));
      }
      ctx.closePath();
  }
}

function canvas(): [HTMLCanvasElement, CanvasRenderingContext2D] {
  const cv = document.createElement('canvas');
  cv.width = SIZE;
  cv.height = SIZE;
  return [cv, cv.getContext('2d')!];
}

export function unitIcon(type: string, status: string): HTMLCanvasElement {
  const [cv, ctx] = canvas();
  path(ctx, type);
  ctx.fillStyle = STATUS_COLOUR[status] ?? '#6b6b6b';
  ctx.fill();
  ctx.lineWidth = 3;
  ctx.strokeStyle = status === 'out_of_service' ? '#000' : '#fff';
  ctx.stroke();
  if (status === 'out_of_service') {
    ctx.beginPath();
    ctx.moveTo(8, SIZE - 8);
    ctx.lineTo(SIZE - 8, 8);
    ctx.strokeStyle = '#fff';
    ctx.stroke();
  }
  return cv;
}

export function incidentIcon(priority: number): HTMLCanvasElement {
  const [cv, ctx] = canvas();
  const c = SIZE / 2;
  // A warning triangle with a heavy outline; priority 1 is the largest.
  const r = SIZE / 2 - (priority === 1 ? 2 : priority === 2 ? 5 : 8);
  ctx.beginPath();
  ctx.moveTo(c, c - r);
  ctx.lineTo(c + r, c + r * 0.85);
  ctx.lineTo(c - r, c + r * 0.85);
  ctx.closePath();
  ctx.fillStyle = PRIORITY_COLOUR[priority] ?? '#999';
  ctx.fill();
  ctx.lineWidth = 3;
  ctx.strokeStyle = '#111';
  ctx.stroke();
  ctx.fillStyle = '#111';
  ctx.font = `bold ${Math.round(r * 0.9)}px sans-serif`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(String(priority), c, c + r * 0.25);
  return cv;
}

export function unitIconName(type: string, status: string): string {
  return `unit-${type}-${status}`;
}

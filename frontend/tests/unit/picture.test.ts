import { describe, expect, it } from 'vitest';
import { Picture, type DiffMsg, type Feature, type SnapshotMsg } from '../../src/picture';

const unit = (id: string, lon: number, seq: number, status = 'available'): Feature => ({
  type: 'Feature',
  id,
  geometry: { type: 'Point', coordinates: [lon, 51] },
  properties: { type: 'police', status, seq },
});

const snapshot = (seq: number, units: Feature[]): SnapshotMsg => ({
  type: 'snapshot',
  sub: 'map',
  seq,
  collections: { units, incidents: [], hazards: [] },
});

const diff = (from_seq: number, seq: number, collections: DiffMsg['collections']): DiffMsg => ({
  type: 'diff',
  sub: 'map',
  from_seq,
  seq,
  collections,
});

describe('Picture', () => {
  it('a snapshot replaces what was held', () => {
    const p = new Picture(['units', 'incidents', 'hazards']);
    p.applySnapshot(snapshot(10, [unit('a', 5, 9), unit('b', 6, 10)]));
    const applied = p.applySnapshot(snapshot(20, [unit('c', 5, 20)]));
    expect([...p.features('units').keys()]).toEqual(['c']);
    expect(p.seq).toBe(20);
    expect(applied.dirty.has('units')).toBe(true);
    expect(p.get('units', 'c')!.properties.__id).toBe('c');
  });

  it('applies upserts, moves and removals with their reasons', () => {
    const p = new Picture(['units', 'incidents', 'hazards']);
    p.applySnapshot(snapshot(10, [unit('a', 5, 9), unit('b', 6, 10), unit('c', 7, 10)]));
    const applied = p.applyDiff(
      diff(10, 14, {
        units: {
          upsert: [unit('a', 5.5, 12, 'en_route'), unit('d', 4, 13)],
          remove: [
            { id: 'b', reason: 'deleted' },
            { id: 'c', reason: 'left_viewport' },
            { id: 'zz', reason: 'expired' },
          ],
        },
      }),
    )!;
    expect(p.get('units', 'a')!.geometry.coordinates).toEqual([5.5, 51]);
    expect(p.get('units', 'a')!.properties.status).toBe('en_route');
    expect(p.count('units')).toBe(2);
    expect(applied.removed).toEqual({ deleted: 1, left_viewport: 1 });
    expect(p.removals.expired).toBe(0);
    expect(applied.dirty).toEqual(new Set(['units']));
    expect(p.seq).toBe(14);
  });

  it('is idempotent and never goes back to an older version', () => {
    const p = new Picture(['units']);
    p.applySnapshot(snapshot(10, [unit('a', 5, 10)]));
    const d = diff(10, 12, { units: { upsert: [unit('a', 6, 12)] } });
    p.applyDiff(d);
    p.applyDiff(d);
    expect(p.count('units')).toBe(1);
    p.applyDiff(diff(12, 13, { units: { upsert: [unit('a', 1, 11)] } }));
    expect(p.get('units', 'a')!.geometry.coordinates).toEqual([6, 51]);
  });

  it('applies field-level deltas', () => {
    const p = new Picture(['units']);
    p.applySnapshot(snapshot(10, [{ ...unit('a', 5, 10), properties: { type: 'police', status: 'available', note: 'x', seq: 10 } }]));
    p.applyDiff(
      diff(10, 11, {
        units: {
          upsert: [
            { id: 'a', delta: true, geometry: { type: 'Point', coordinates: [5.1, 51] }, set: { status: 'on_scene', seq: 11 }, unset: ['note'] },
            { id: 'unknown', delta: true, set: { status: 'x' } },
          ],
        },
      }),
    );
    const a = p.get('units', 'a')!;
    expect(a.geometry.coordinates).toEqual([5.1, 51]);
    expect(a.properties).toMatchObject({ type: 'police', status: 'on_scene', seq: 11 });
    expect('note' in a.properties).toBe(false);
    expect(p.get('units', 'unknown')).toBeUndefined();
  });

  it('applies a collapsed catch-up diff', () => {
    const p = new Picture(['units']);
    p.applySnapshot(snapshot(10, [unit('a', 5, 10), unit('b', 5, 10)]));
    const msg = { ...diff(10, 500, { units: { upsert: [unit('a', 7, 480)], remove: [{ id: 'b', reason: 'expired' as const }] } }), catch_up: true };
    expect(p.applyDiff(msg)).not.toBeNull();
    expect(p.seq).toBe(500);
    expect(p.removals.expired).toBe(1);
  });

  it('refuses a diff that does not continue from what it holds', () => {
    const p = new Picture(['units']);
    expect(p.applyDiff(diff(0, 5, { units: { upsert: [unit('a', 5, 5)] } }))).toBeNull();
    p.applySnapshot(snapshot(10, []));
    expect(p.applyDiff(diff(11, 15, { units: { upsert: [unit('a', 5, 15)] } }))).toBeNull();
    expect(p.count('units')).toBe(0);
    expect(p.seq).toBe(10);
  });
});

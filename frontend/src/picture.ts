// The client-side picture: what this map holds of the live collections,
// kept exactly as the protocol (docs/protocol.md) describes. Pure: no DOM,
// no map, no socket, so it is unit-tested directly.

export type Geometry = { type: string; coordinates: unknown };

export interface Feature {
  type: 'Feature';
  id: string;
  geometry: Geometry;
  properties: Record<string, unknown>;
}

export interface DeltaItem {
  id: string;
  delta: true;
  geometry?: Geometry;
  set?: Record<string, unknown>;
  unset?: string[];
}

export type RemoveReason = 'deleted' | 'expired' | 'left_viewport' | 'filtered';

export interface SnapshotMsg {
  type: 'snapshot';
  sub: string;
  seq: number;
  /** The server history `seq` belongs to. */
  epoch?: string;
  resync?: boolean;
  collections: Record<string, Feature[]>;
}

export interface DiffMsg {
  type: 'diff';
  sub: string;
  from_seq: number;
  seq: number;
  catch_up?: boolean;
  collections: Record<
    string,
    { upsert?: (Feature | DeltaItem)[]; remove?: { id: string; reason: RemoveReason }[] }
  >;
}

/** Counts of what one applied message did, for the map and for tests. */
export interface Applied {
  upserted: number;
  removed: Partial<Record<RemoveReason, number>>;
  /** Collections whose contents changed (the map re-renders only those). */
  dirty: Set<string>;
}

/** Every removal reason this picture has applied since it was created. */
export type RemovalLog = Record<RemoveReason, number>;

/**
 * The feature with its id also in `properties.__id`: MapLibre drops string
 * feature ids, and the map needs the id of what was clicked or drawn.
 */
function withId(f: Feature): Feature {
  const id = String(f.id);
  return { ...f, id, properties: { ...(f.properties ?? {}), __id: id } };
}

export class Picture {
  readonly collections: string[];
  private data = new Map<string, Map<string, Feature>>();
  /** `seq` of the last applied snapshot or diff; `null` before the first. */
  seq: number | null = null;
  removals: RemovalLog = { deleted: 0, expired: 0, left_viewport: 0, filtered: 0 };

  constructor(collections: string[]) {
    this.collections = collections;
    for (const c of collections) this.data.set(c, new Map());
  }

  /** The features of one collection (live view; do not mutate). */
  features(collection: string): Map<string, Feature> {
    return this.data.get(collection) ?? new Map();
  }

  get(collection: string, id: string): Feature | undefined {
    return this.data.get(collection)?.get(id);
  }

  count(collection: string): number {
    return this.data.get(collection)?.size ?? 0;
  }

  /** Drops everything (a fresh subscription without `since`). */
  clear(): Set<string> {
    const dirty = new Set<string>();
    for (const [c, m] of this.data) {
      if (m.size > 0) dirty.add(c);
      m.clear();
    }
    this.seq = null;
    return dirty;
  }

  /** A snapshot replaces whatever was held. */
  applySnapshot(msg: SnapshotMsg): Applied {
    const applied: Applied = { upserted: 0, removed: {}, dirty: this.clear() };
    for (const [c, list] of Object.entries(msg.collections)) {
      const m = this.data.get(c);
      if (!m) continue;
      for (const f of list) m.set(String(f.id), withId(f));
      applied.upserted += list.length;
      applied.dirty.add(c);
    }
    this.seq = msg.seq;
    return applied;
  }

  /**
   * Applies a diff. Items are idempotent: an upsert of a version already
   * held or a remove of an id not held changes nothing. A diff that does
   * not continue from the held `seq` is refused (returns `null`): the caller
   * must resubscribe, since applying it could leave the picture wrong.
   */
  applyDiff(msg: DiffMsg): Applied | null {
    if (this.seq === null || msg.from_seq > this.seq) return null;
    const applied: Applied = { upserted: 0, removed: {}, dirty: new Set() };
    for (const [c, change] of Object.entries(msg.collections)) {
      const m = this.data.get(c);
      if (!m) continue;
      for (const r of change.remove ?? []) {
        if (m.delete(String(r.id))) {
          applied.removed[r.reason] = (applied.removed[r.reason] ?? 0) + 1;
          this.removals[r.reason] = (this.removals[r.reason] ?? 0) + 1;
          applied.dirty.add(c);
        }
      }
      for (const item of change.upsert ?? []) {
        const id = String(item.id);
        if ('delta' in item && item.delta) {
          const old = m.get(id);
          if (!old) continue; // a delta for a feature not held: nothing to patch
          const properties = { ...old.properties, ...(item.set ?? {}) };
          for (const k of item.unset ?? []) delete properties[k];
          properties.__id = id;
          m.set(id, { ...old, geometry: item.geometry ?? old.geometry, properties });
        } else {
          const f = item as Feature;
          const old = m.get(id);
          const oldSeq = old ? Number(old.properties.seq) : NaN;
          const newSeq = Number(f.properties?.seq);
          if (old && Number.isFinite(oldSeq) && Number.isFinite(newSeq) && newSeq < oldSeq) continue;
          m.set(id, withId(f));
        }
        applied.upserted += 1;
        applied.dirty.add(c);
      }
    }
    this.seq = Math.max(this.seq, msg.seq);
    return applied;
  }
}

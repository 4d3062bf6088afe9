// The live connection: one WebSocket subscription to the map's viewport
// (docs/protocol.md). It moves the subscription as the map pans (throttled),
// notices silence (stale after three heartbeat intervals), reconnects with
// exponential backoff and resumes with `since` for the bbox the server last
// acknowledged, then moves to the current viewport.
//
// Socket, clock and timers are injected so the logic is unit-tested without
// a browser or a server.

import { Picture, type Applied, type DiffMsg, type SnapshotMsg } from './picture';

export type BBox = [number, number, number, number];

export type Status =
  | { kind: 'connecting' }
  | { kind: 'live'; since: number }
  | { kind: 'reconnecting'; attempt: number; lastHeard: number | null }
  | { kind: 'stale'; lastHeard: number };

/** The part of the WebSocket API the client uses. */
export interface SocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface Env {
  connect(url: string): SocketLike;
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  random(): number;
  /**
   * The server's uptime in seconds (`/healthz`), or null when unknown. Used
   * before a resume: `seq` restarts with the server, so a `since` from before
   * a restart could be honoured against a different history.
   */
  uptimeS?: () => Promise<number | null>;
}

export interface LiveOptions {
  url: string;
  collections: string[];
  /** The server's heartbeat interval (`--heartbeat-s`), in ms. */
  heartbeatMs?: number;
  /** Smallest gap between two `viewport` messages, in ms. */
  viewportThrottleMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  subId?: string;
  onApplied?: (applied: Applied) => void;
  onStatus?: (status: Status) => void;
  onError?: (message: string) => void;
}

const OPEN = 1;

export function browserEnv(healthUrl = '/healthz'): Env {
  return {
    uptimeS: async () => {
      try {
        const r = await fetch(healthUrl, { cache: 'no-store' });
        const v = (await r.json()).uptime_s;
        return typeof v === 'number' ? v : null;
      } catch {
        return null;
      }
    },
    connect: (url) => new WebSocket(url) as unknown as SocketLike,
    now: () => Date.now(),
    setTimeout: (fn, ms) => window.setTimeout(fn, ms),
    clearTimeout: (h) => window.clearTimeout(h as number),
    random: Math.random,
  };
}

/** Backoff before reconnect attempt `attempt` (1-based): exponential, capped, with jitter. */
export function backoffDelay(attempt: number, initial: number, max: number, random: number): number {
  const base = Math.min(max, initial * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.75 + 0.5 * random));
}

function sameBox(a: BBox | null, b: BBox | null): boolean {
  return !!a && !!b && a.every((v, i) => v === b[i]);
}

export class LiveClient {
  readonly picture: Picture;
  status: Status = { kind: 'connecting' };
  /** Time of the last message of any kind from the server. */
  lastHeard: number | null = null;
  /** Counters for the UI and tests. */
  stats = { connects: 0, snapshots: 0, diffs: 0, resumed: 0, resyncs: 0, messages: 0, handleMs: 0, restarts: 0 };

  private ws: SocketLike | null = null;
  private attempt = 0;
  private stopped = false;
  private wanted: BBox | null = null;
  /** The bbox the server holds for the picture we hold (acknowledged). */
  private acked: BBox | null = null;
  /** The bbox we last sent, and the ping id that will confirm it. */
  private pending: { bbox: BBox; ping: number } | null = null;
  private subscribed = false;
  private pingSeq = 0;
  /** When the current connection first delivered a message. */
  private connHeard: number | null = null;
  /** The same for the last connection that delivered anything: the server was up then. */
  private serverUpSince: number | null = null;
  /** The server history our picture's seq belongs to (from the snapshot). */
  private epoch: string | null = null;
  private lastViewportSent = 0;
  private viewportTimer: unknown = null;
  private staleTimer: unknown = null;
  private retryTimer: unknown = null;
  private readonly o: Required<Omit<LiveOptions, 'onApplied' | 'onStatus' | 'onError'>> & LiveOptions;

  constructor(options: LiveOptions, private env: Env) {
    this.o = {
      heartbeatMs: 10_000,
      viewportThrottleMs: 250,
      backoffInitialMs: 500,
      backoffMaxMs: 15_000,
      subId: 'map',
      ...options,
    };
    this.picture = new Picture(options.collections);
  }

  /** Starts (or keeps) the subscription for `bbox`. */
  setViewport(bbox: BBox): void {
    this.wanted = bbox;
    if (!this.ws && !this.retryTimer && !this.stopped) this.open();
    else this.scheduleViewport();
  }

  stop(): void {
    this.stopped = true;
    for (const t of [this.viewportTimer, this.staleTimer, this.retryTimer]) if (t) this.env.clearTimeout(t);
    this.ws?.close(1000, 'client stopped');
    this.ws = null;
  }

  private setStatus(s: Status): void {
    this.status = s;
    this.o.onStatus?.(s);
  }

  private open(): void {
    this.subscribed = false;
    this.connHeard = null;
    this.stats.connects += 1;
    const ws = this.env.connect(this.o.url);
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      void this.checkThenSubscribe(ws);
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.onMessage(String(ev.data));
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.dropped();
    };
    ws.onerror = () => {
      /* onclose follows */
    };
    this.armStaleTimer();
  }

  /**
   * Before resuming, make sure the server has not restarted since we last
   * heard it (its uptime must cover that time, with 2 s for rounding);
   * otherwise, or when unsure, start afresh with a snapshot.
   */
  private async checkThenSubscribe(ws: SocketLike): Promise<void> {
    const wouldResume = this.picture.seq !== null && this.acked !== null && this.pending === null;
    // A server that names its epoch decides itself whether `since` is from
    // its history; only older servers need the uptime check.
    if (wouldResume && this.epoch === null && this.env.uptimeS) {
      const up = await this.env.uptimeS().catch(() => null);
      if (this.ws !== ws) return;
      const since = this.serverUpSince;
      if (up === null || since === null || up + 2 < (this.env.now() - since) / 1000) {
        this.acked = null;
        this.stats.restarts += 1;
      }
    }
    this.subscribe();
  }

  private subscribe(): void {
    if (!this.ws || !this.wanted) return;
    // Resume only for the bbox the held picture belongs to; if a viewport move
    // was in flight when the connection dropped, that is unknown: start afresh.
    const resume = this.picture.seq !== null && this.acked !== null && this.pending === null;
    const bbox = resume ? this.acked! : this.wanted;
    const msg: Record<string, unknown> = {
      type: 'subscribe',
      id: this.o.subId,
      collections: this.o.collections,
      bbox,
      precision: 6,
    };
    if (resume) {
      msg.since = this.picture.seq;
      if (this.epoch !== null) msg.epoch = this.epoch;
    }
    this.acked = bbox;
    this.pending = null;
    this.send(msg);
  }

  private send(msg: unknown): void {
    if (this.ws && this.ws.readyState === OPEN) this.ws.send(JSON.stringify(msg));
  }

  private scheduleViewport(): void {
    if (!this.subscribed || this.viewportTimer) return;
    const wait = Math.max(0, this.lastViewportSent + this.o.viewportThrottleMs - this.env.now());
    this.viewportTimer = this.env.setTimeout(() => {
      this.viewportTimer = null;
      this.sendViewport();
    }, wait);
  }

  private sendViewport(): void {
    if (!this.subscribed || !this.wanted) return;
    const target = this.pending?.bbox ?? this.acked;
    if (sameBox(target, this.wanted)) return;
    this.lastViewportSent = this.env.now();
    const ping = ++this.pingSeq;
    this.pending = { bbox: this.wanted, ping };
    this.send({ type: 'viewport', id: this.o.subId, bbox: this.wanted });
    // The session answers in order: when this pong comes, the move is applied.
    this.send({ type: 'ping', id: ping });
  }

  private onMessage(text: string): void {
    const t0 = performance.now();
    try {
      this.handle(text);
    } finally {
      this.stats.handleMs += performance.now() - t0;
    }
  }

  private handle(text: string): void {
    this.lastHeard = this.env.now();
    if (this.connHeard === null) {
      this.connHeard = this.lastHeard;
      this.serverUpSince = this.lastHeard;
    }
    this.stats.messages += 1;
    this.attempt = 0;
    this.armStaleTimer();
    let msg: { type: string; [k: string]: unknown };
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    switch (msg.type) {
      case 'snapshot': {
        const applied = this.picture.applySnapshot(msg as unknown as SnapshotMsg);
        this.epoch = typeof msg.epoch === 'string' ? msg.epoch : null;
        this.stats.snapshots += 1;
        if ((msg as unknown as SnapshotMsg).resync) this.stats.resyncs += 1;
        this.o.onApplied?.(applied);
        this.onSubscribed();
        break;
      }
      case 'diff': {
        const applied = this.picture.applyDiff(msg as unknown as DiffMsg);
        if (applied === null) {
          // A gap: never guess. Start the subscription afresh.
          const dirty = this.picture.clear();
          this.o.onApplied?.({ upserted: 0, removed: {}, dirty });
          this.acked = null;
          this.subscribed = false;
          this.subscribe();
          return;
        }
        this.stats.diffs += 1;
        if (!this.subscribed) this.stats.resumed += 1;
        this.o.onApplied?.(applied);
        this.onSubscribed();
        break;
      }
      case 'pong':
        if (this.pending && msg.id === this.pending.ping) {
          this.acked = this.pending.bbox;
          this.pending = null;
          this.scheduleViewport();
        }
        break;
      case 'heartbeat':
        break;
      case 'error':
        this.o.onError?.(String(msg.message ?? msg.code));
        break;
    }
  }

  private onSubscribed(): void {
    if (this.subscribed) return;
    this.subscribed = true;
    this.setStatus({ kind: 'live', since: this.env.now() });
    this.sendViewport();
  }

  /** Silence for more than three heartbeat intervals: stale, and reconnect. */
  private armStaleTimer(): void {
    if (this.staleTimer) this.env.clearTimeout(this.staleTimer);
    this.staleTimer = this.env.setTimeout(() => {
      this.staleTimer = null;
      const ws = this.ws;
      this.ws = null;
      ws?.close(4000, 'silent for three heartbeats');
      this.scheduleReconnect(true);
    }, 3 * this.o.heartbeatMs);
  }

  /** Not live: "stale" once silent for three heartbeats, else "reconnecting". */
  private offlineStatus(stale: boolean): Status {
    const silent = this.lastHeard !== null && this.env.now() - this.lastHeard > 3 * this.o.heartbeatMs;
    if (this.lastHeard !== null && (stale || silent)) return { kind: 'stale', lastHeard: this.lastHeard };
    return { kind: 'reconnecting', attempt: this.attempt, lastHeard: this.lastHeard };
  }

  private dropped(): void {
    this.ws = null;
    this.scheduleReconnect(false);
  }

  private scheduleReconnect(stale: boolean): void {
    if (this.stopped || this.retryTimer) return;
    this.subscribed = false;
    if (this.viewportTimer) {
      this.env.clearTimeout(this.viewportTimer);
      this.viewportTimer = null;
    }
    if (this.staleTimer) {
      this.env.clearTimeout(this.staleTimer);
      this.staleTimer = null;
    }
    this.attempt += 1;
    this.setStatus(this.offlineStatus(stale));
    const delay = backoffDelay(this.attempt, this.o.backoffInitialMs, this.o.backoffMaxMs, this.env.random());
    this.retryTimer = this.env.setTimeout(() => {
      this.retryTimer = null;
      this.setStatus(this.offlineStatus(false));
      this.open();
    }, delay);
  }
}

import { beforeEach, describe, expect, it } from 'vitest';
import { LiveClient, backoffDelay, type Env, type SocketLike, type Status } from '../../src/live';

class FakeSocket implements SocketLike {
  readyState = 0;
  sent: Record<string, unknown>[] = [];
  closed = false;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  send(data: string) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.closed = true;
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(msg: unknown) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  drop() {
    this.readyState = 3;
    this.onclose?.({});
  }
  last(type: string) {
    return [...this.sent].reverse().find((m) => m.type === type);
  }
}

class FakeEnv implements Env {
  time = 1_000_000;
  uptimeS?: () => Promise<number | null>;
  sockets: FakeSocket[] = [];
  private timers: { at: number; fn: () => void; id: number }[] = [];
  private next = 1;
  connect() {
    const s = new FakeSocket();
    this.sockets.push(s);
    return s;
  }
  now() {
    return this.time;
  }
  setTimeout(fn: () => void, ms: number) {
    const id = this.next++;
    this.timers.push({ at: this.time + ms, fn, id });
    return id;
  }
  clearTimeout(h: unknown) {
    this.timers = this.timers.filter((t) => t.id !== h);
  }
  random() {
    return 0.5;
  }
  advance(ms: number) {
    const end = this.time + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at);
      const t = this.timers[0];
      if (!t || t.at > end) break;
      this.timers.shift();
      this.time = t.at;
      t.fn();
    }
    this.time = end;
  }
  get socket() {
    return this.sockets[this.sockets.length - 1];
  }
}

const A: [number, number, number, number] = [5, 50, 6, 51];
const B: [number, number, number, number] = [5.5, 50.5, 6.5, 51.5];
const unit = (id: string, seq: number) => ({
  type: 'Feature',
  id,
  geometry: { type: 'Point', coordinates: [5.5, 50.5] },
  properties: { type: 'police', status: 'available', seq },
});

describe('LiveClient', () => {
  let env: FakeEnv;
  let client: LiveClient;
  let statuses: Status['kind'][];

  beforeEach(() => {
    env = new FakeEnv();
    statuses = [];
    client = new LiveClient(
      { url: 'ws://x/ws', collections: ['units'], heartbeatMs: 1000, viewportThrottleMs: 200, backoffInitialMs: 500, backoffMaxMs: 8000 },
      env,
    );
    client.setViewport(A);
    env.socket.open();
  });

  /** Heard for 5 s, then the link drops and comes back a second later. */
  const reconnectAfterSilence = async () => {
    env.advance(5000);
    env.socket.drop();
    env.advance(1000);
    env.socket.open();
    await new Promise((r) => setTimeout(r, 0)); // the uptime check is async
  };

  const goLive = (seq = 10) => {
    env.socket.receive({ type: 'snapshot', sub: 'map', seq, collections: { units: [unit('a', seq)] } });
  };

  it('subscribes to the viewport and is live only after the snapshot', () => {
    // Track statuses from here on.
    client['o'].onStatus = (s: Status) => statuses.push(s.kind);
    const sub = env.socket.last('subscribe')!;
    expect(sub).toMatchObject({ id: 'map', collections: ['units'], bbox: A });
    expect(sub.since).toBeUndefined();
    expect(client.status.kind).toBe('connecting');
    goLive();
    expect(client.status.kind).toBe('live');
    expect(client.picture.count('units')).toBe(1);
  });

  it('throttles viewport messages while panning and confirms them with a ping', () => {
    goLive();
    const before = env.socket.sent.length;
    client.setViewport([5.1, 50, 6.1, 51]);
    env.advance(50);
    client.setViewport([5.2, 50, 6.2, 51]);
    env.advance(50);
    client.setViewport(B);
    env.advance(300);
    // Leading edge at once, then at most one per 200 ms, ending on the latest box.
    const moves = env.socket.sent.slice(before).filter((m) => m.type === 'viewport');
    expect(moves.length).toBe(2);
    expect(moves[0].bbox).toEqual([5.1, 50, 6.1, 51]);
    expect(moves[1].bbox).toEqual(B);
    env.advance(1000);
    expect(env.socket.sent.filter((m) => m.type === 'viewport').length).toBe(2);
    const ping = env.socket.last('ping')!;
    expect(ping.id).toBeTypeOf('number');
  });

  it('resumes with since and the acknowledged bbox after a drop, then moves the viewport', () => {
    goLive(10);
    client.setViewport(B);
    env.advance(300);
    const ping = env.socket.last('ping')!;
    env.socket.receive({ type: 'diff', sub: 'map', from_seq: 10, seq: 12, collections: {} });
    env.socket.receive({ type: 'pong', seq: 12, id: ping.id });
    // Pan again, then the connection drops before that move is confirmed.
    client.setViewport(A);
    env.advance(300);
    env.socket.drop();
    expect(client.status.kind).toBe('reconnecting');
    env.advance(backoffDelay(1, 500, 8000, 0.5));
    expect(env.sockets.length).toBe(2);
    env.socket.open();
    // In-flight move: what the client holds is not known to match either box. Start afresh.
    expect(env.socket.last('subscribe')!.since).toBeUndefined();
    expect(env.socket.last('subscribe')!.bbox).toEqual(A);
  });

  it('resumes with since when no viewport move was in flight', () => {
    goLive(10);
    client.setViewport(B);
    env.advance(300);
    env.socket.receive({ type: 'diff', sub: 'map', from_seq: 10, seq: 12, collections: {} });
    env.socket.receive({ type: 'pong', seq: 12, id: env.socket.last('ping')!.id });
    env.socket.receive({ type: 'diff', sub: 'map', from_seq: 12, seq: 15, collections: { units: { upsert: [unit('b', 15)] } } });
    env.socket.drop();
    env.advance(1000);
    env.socket.open();
    const sub = env.socket.last('subscribe')!;
    expect(sub.since).toBe(15);
    expect(sub.bbox).toEqual(B);
    expect(client.status.kind).toBe('reconnecting');
    // The resume answer is a diff: live again, nothing lost.
    env.socket.receive({ type: 'diff', sub: 'map', from_seq: 15, seq: 17, collections: { units: { remove: [{ id: 'a', reason: 'deleted' }] } } });
    expect(client.status.kind).toBe('live');
    expect([...client.picture.features('units').keys()]).toEqual(['b']);
    expect(client.stats.resumed).toBe(1);
  });

  it('moves to the new viewport after resuming', () => {
    goLive(10);
    env.socket.drop();
    client.setViewport(B); // panned while offline
    env.advance(1000);
    env.socket.open();
    expect(env.socket.last('subscribe')).toMatchObject({ since: 10, bbox: A });
    expect(env.socket.last('viewport')).toBeUndefined();
    env.socket.receive({ type: 'diff', sub: 'map', from_seq: 10, seq: 11, collections: {} });
    expect(env.socket.last('viewport')).toMatchObject({ bbox: B });
  });

  it('goes stale after three silent heartbeat intervals and reconnects', () => {
    goLive(10);
    env.advance(2500);
    env.socket.receive({ type: 'heartbeat', seq: 10, at: 'x' });
    const heard = env.now();
    env.advance(2999);
    expect(client.status.kind).toBe('live');
    env.advance(2);
    expect(client.status).toEqual({ kind: 'stale', lastHeard: heard });
    expect(env.sockets[0].closed).toBe(true);
    env.advance(1000);
    expect(env.sockets.length).toBe(2);
    // Still stale (not live) while the new connection has not answered.
    env.socket.open();
    expect(client.status.kind).toBe('stale');
    env.socket.receive({ type: 'snapshot', sub: 'map', seq: 20, resync: true, collections: { units: [] } });
    expect(client.status.kind).toBe('live');
    expect(client.picture.count('units')).toBe(0);
  });

  it('backs off exponentially, capped, while the server stays away', () => {
    goLive(10);
    env.socket.drop();
    const gaps: number[] = [];
    for (let i = 0; i < 7; i++) {
      const n = env.sockets.length;
      let waited = 0;
      while (env.sockets.length === n) {
        env.advance(10);
        waited += 10;
      }
      gaps.push(waited);
      env.socket.drop();
    }
    expect(gaps.slice(0, 5)).toEqual([500, 1000, 2000, 4000, 8000]);
    expect(gaps[6]).toBe(8000);
  });

  it('resubscribes afresh on a gap in the diffs', () => {
    goLive(10);
    env.socket.receive({ type: 'diff', sub: 'map', from_seq: 12, seq: 14, collections: {} });
    expect(client.picture.count('units')).toBe(0);
    expect(env.socket.last('subscribe')!.since).toBeUndefined();
  });

  it('does not resume across a server restart (seq starts over)', async () => {
    env.uptimeS = async () => 1; // the server has been up for 1 s
    goLive(10);
    await reconnectAfterSilence();
    const sub = env.socket.last('subscribe')!;
    expect(sub.since).toBeUndefined();
    expect(client.stats.restarts).toBe(1);
  });

  it('resumes when the server has been up all along', async () => {
    env.uptimeS = async () => 3600;
    goLive(10);
    await reconnectAfterSilence();
    expect(env.socket.last('subscribe')!.since).toBe(10);
  });

  it('resumes with the epoch, and lets the server judge it', async () => {
    let asked = 0;
    env.uptimeS = async () => {
      asked += 1;
      return 1; // would look like a restart to the uptime check
    };
    env.socket.receive({
      type: 'snapshot', sub: 'map', epoch: '3f9a0c27d15e88b4', seq: 10,
      collections: { units: [unit('a', 10)] },
    });
    await reconnectAfterSilence();
    const sub = env.socket.last('subscribe')!;
    expect(sub.since).toBe(10);
    expect(sub.epoch).toBe('3f9a0c27d15e88b4');
    expect(asked).toBe(0);
  });

  it('jittered backoff stays within ±25%', () => {
    expect(backoffDelay(1, 500, 8000, 0)).toBe(375);
    expect(backoffDelay(1, 500, 8000, 1)).toBe(625);
    expect(backoffDelay(10, 500, 8000, 0.5)).toBe(8000);
  });
});

// End-to-end harness: the real `beeld` binary on a free port with a feed
// token, and a real headless Chromium (Debian `chromium`) driven by
// playwright-core. Used by map.test.mjs and by the frame benchmark.

import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, '../../..');
export const artifacts = path.join(repo, 'tests/artifacts');
export const TOKEN = 'e2e-token-0001';

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export function chromiumPath() {
  const candidates = [process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`chromium not found (tried ${candidates.join(', ')}); install Debian "chromium" or set CHROMIUM`);
  return found;
}

// Servers still running when this process exits (a failed or cancelled test)
// are killed, so no test leaves a server behind.
const running = new Set();
process.on('exit', () => {
  for (const p of running) if (p.exitCode === null) p.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => process.exit(130));

/** Starts `beeld serve`; resolves when /healthz says ok. */
export async function startServer({ port, extraArgs = [] } = {}) {
  port ??= await freePort();
  const bin = process.env.BEELD_BIN ?? path.join(repo, 'target/debug/beeld');
  if (!existsSync(bin)) throw new Error(`beeld binary not found at ${bin}; build it with cargo build --bin beeld or set BEELD_BIN`);
  const shared = process.env.BEELD_SHARED_DATA ?? path.resolve(repo, '../shared/data');
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'beeld-e2e-'));
  const args = [
    'serve',
    '--listen', `127.0.0.1:${port}`,
    '--feed-token', `e2e=${TOKEN}`,
    '--boundaries', path.join(shared, 'boundaries'),
    '--frontend-dir', path.join(repo, 'frontend/dist'),
    '--data-dir', dataDir,
    '--heartbeat-s', '1',
    ...extraArgs,
  ];
  const proc = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
  running.add(proc);
  proc.once('exit', () => running.delete(proc));
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4000)));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`beeld exited with ${proc.exitCode}: ${stderr}`);
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`beeld did not become healthy: ${stderr}`);
    }
    try {
      const r = await fetch(`${base}/healthz`);
      if (r.ok) break;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    port,
    base,
    proc,
    async stop() {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    },
  };
}

export async function launchBrowser() {
  // playwright-core's launch() gives every browser a fresh temporary profile
  // (its own --user-data-dir), removed on close.
  return chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--enable-unsafe-swiftshader',
      '--use-angle=swiftshader',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Writes features through the API as the e2e feed. */
export async function api(base, method, pathname, body) {
  const res = await fetch(base + pathname, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/geo+json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${pathname}: ${res.status} ${await res.text()}`);
  return res;
}

export function ensureArtifacts() {
  mkdirSync(artifacts, { recursive: true });
  return artifacts;
}

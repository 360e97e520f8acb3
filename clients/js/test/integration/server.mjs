// Starts and stops real `peroxo serve` processes for the integration tests: free ports (or a
// given address, to restart on the same one), a fresh SQLite database in a temporary
// directory, JSON logs read for the "gateway listening" line. PEROXO_BIN names the binary
// (default: the workspace's target/debug/peroxo).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { waitFor as poll } from '../wait.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PEROXO_BIN = path.resolve(process.env.PEROXO_BIN ?? path.join(HERE, '../../../../target/debug/peroxo'));
export const JWT_SECRET = 'sdk-test-secret-0123456789-abcdefghijklmnopqr';
const START_MS = 30_000;

const running = new Set();
process.on('exit', () => { for (const child of running) child.kill('SIGKILL'); });

// The caller's PEROXO_* and RUST_LOG must not change the setup.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('PEROXO_') && k !== 'RUST_LOG'));

/** A server in a directory of its own; `start()` again after `kill()` restarts it on the same address and database. */
export class Server {
  static async create({ jwt = false } = {}) {
    const dir = await mkdtemp(path.join(tmpdir(), 'peroxo-sdk-'));
    const server = new Server(dir, jwt);
    await server.start();
    return server;
  }

  constructor(dir, jwt) {
    this.dir = dir;
    this.jwt = jwt;
    this.addr = undefined;
    this.child = undefined;
    this.log = [];
  }

  get url() {
    return `ws://${this.addr}/ws`;
  }

  async start() {
    const lines = [
      '[http]', `listen = ${JSON.stringify(this.addr ?? '127.0.0.1:0')}`, '',
      '[storage]', 'listen = "127.0.0.1:0"', `sqlite_path = ${JSON.stringify(path.join(this.dir, 'peroxo.db'))}`, '',
      '[log]', 'format = "json"', 'level = "info"', '',
    ];
    if (this.jwt) lines.push('[auth]', 'mode = "jwt"', `jwt_secret = ${JSON.stringify(JWT_SECRET)}`, 'leeway_secs = 0', '');
    const config = path.join(this.dir, 'peroxo.toml');
    await writeFile(config, lines.join('\n'));
    const child = spawn(PEROXO_BIN, ['serve', ...(this.jwt ? [] : ['--dev']), '--config', config], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    running.add(child);
    child.once('exit', () => running.delete(child));
    child.stderr.on('data', (chunk) => this.log.push(String(chunk)));
    this.addr = await new Promise((resolve, reject) => {
      const fail = (error) => { clearTimeout(timer); child.kill('SIGKILL'); reject(error); };
      const timer = setTimeout(() => fail(new Error(`no "gateway listening" within ${START_MS} ms:\n${this.log.join('')}`)), START_MS);
      child.once('error', (error) => fail(new Error(`cannot run ${PEROXO_BIN}: ${error.message}`)));
      child.once('exit', (code) => fail(new Error(`the server exited early (${code}):\n${this.log.join('')}`)));
      readline.createInterface({ input: child.stdout }).on('line', (line) => {
        this.log.push(`${line}\n`);
        let entry;
        try { entry = JSON.parse(line); } catch { return; }
        if (entry.fields?.message?.startsWith('gateway listening')) {
          clearTimeout(timer);
          child.removeAllListeners('exit');
          child.once('exit', () => running.delete(child));
          resolve(entry.fields.addr);
        }
      });
    });
  }

  /** SIGKILL: a crash, with no goodbye to anyone. */
  async kill() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  async stop() {
    await this.kill();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** An HS256 token the test server accepts, for `ttlSeconds`. */
export function mintToken(user, ttlSeconds) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + ttlSeconds })}`;
  return `${body}.${createHmac('sha256', JWT_SECRET).update(body).digest('base64url')}`;
}

/** Polls `condition` until it holds: a server takes longer than a fake, so 20 s by default. */
export function waitFor(condition, what, timeoutMs = 20_000) {
  return poll(condition, what, timeoutMs, 20);
}

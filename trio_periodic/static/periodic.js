/**
 * periodic.js — a dependency-free Periodic client and worker over WebSocket.
 *
 * Speaks the Periodic wire protocol (framing, job encoding, commands) over a
 * `ws://` listener of trio_periodic: every binary WebSocket message carries
 * exactly one Periodic frame, in both directions, registration included.
 * Works in current browsers and in Node.js 20+ (Node 22+ has a global
 * WebSocket; on Node 20 pass `{WebSocket}` from the `ws` package or run with
 * `--experimental-websocket`).
 *
 * The names follow the Python library (`Client.submit_job` is `submitJob` here);
 * `Client`, `Worker` and `Job` are exported under those names too. Workers
 * reconnect with backoff; with an auth file, pass `{name, token}`. Types:
 * `periodic.d.ts`, served beside this file.
 *
 * @example
 *   import { Client, Worker } from "http://127.0.0.1:8080/periodic.js";
 *   const worker = new Worker("ws://127.0.0.1:5001", { name: "bob", token: "secret" });
 *   worker.addFunc("echo", (job) => job.text().toUpperCase());
 *   worker.work(2); // connects, and reconnects whenever the server goes away
 *   const client = await Client.connect("ws://127.0.0.1:5001");
 *   await client.submitJob("echo", "job-1", "hi", { later: 5 });
 *
 * @module periodic
 */

/** Command codes (PROTOCOL.md §8). */
export const Cmd = Object.freeze({
  NOOP: 0, GRAB_JOB: 1, SCHED_LATER: 2, WORK_DONE: 3, WORK_FAIL: 4, JOB_ASSIGN: 5,
  NO_JOB: 6, CAN_DO: 7, CANT_DO: 8, PING: 9, PONG: 10, SLEEP: 11, UNKNOWN: 12,
  SUBMIT_JOB: 13, STATUS: 14, DROP_FUNC: 15, SUCCESS: 16, REMOVE_JOB: 17, DUMP: 18,
  LOAD: 19, SHUTDOWN: 20, BROADCAST: 21, CONFIG_GET: 22, CONFIG_SET: 23, CONFIG: 24,
  RUN_JOB: 25, ACQUIRED: 26, ACQUIRE: 27, RELEASE: 28, NO_WORKER: 29, DATA: 30,
  RECV_DATA: 31, WORK_DATA: 32, JOB_ASSIGNED: 33, JOB_UNASSIGNED: 34,
});

/** Registration types (PROTOCOL.md §4.1). */
export const ClientType = Object.freeze({ CLIENT: 1, WORKER: 2, AUTH_CLIENT: 3, AUTH_WORKER: 4 });

const REQ = Uint8Array.of(0, 0x52, 0x45, 0x51); // "\0REQ"
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/**
 * CRC-32 (IEEE, as zlib.crc32).
 * @param {Uint8Array} bytes
 * @returns {number} unsigned 32-bit checksum
 */
export function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** @param {string|Uint8Array|ArrayBuffer|null|undefined} value @returns {Uint8Array} */
function toBytes(value) {
  if (value == null) return new Uint8Array(0);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return utf8.encode(String(value));
}

/** Append-only big-endian byte builder. */
class Writer {
  constructor() { this.parts = []; }
  num(size, set, value) {
    const view = new DataView(new ArrayBuffer(size));
    view[set](0, value);
    this.parts.push(new Uint8Array(view.buffer));
    return this;
  }
  u8(v) { return this.num(1, "setUint8", v); }
  i16(v) { return this.num(2, "setInt16", v); }
  u32(v) { return this.num(4, "setUint32", v); }
  i32(v) { return this.num(4, "setInt32", v); }
  i64(v) { return this.num(8, "setBigInt64", typeof v === "bigint" ? v : BigInt(Math.trunc(v))); }
  u64(v) { return this.num(8, "setBigUint64", BigInt(v)); }
  raw(v) { this.parts.push(toBytes(v)); return this; }
  str8(v) {
    const b = toBytes(v);
    if (b.length > 255) throw new RangeError("name longer than 255 bytes");
    return this.u8(b.length).raw(b);
  }
  str32(v) { const b = toBytes(v); return this.u32(b.length).raw(b); }
  bytes() {
    const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of this.parts) { out.set(p, off); off += p.length; }
    return out;
  }
}

/** Big-endian reader over a Uint8Array; throws on short input. */
class Reader {
  constructor(bytes) {
    this.buf = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.off = 0;
  }
  take(n) {
    if (this.off + n > this.buf.length) throw new Error("truncated frame");
    const out = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return out;
  }
  num(size, get) { this.take(size); return this.view[get](this.off - size); }
  u8() { return this.num(1, "getUint8"); }
  u32() { return this.num(4, "getUint32"); }
  i32() { return this.num(4, "getInt32"); }
  i64() { return this.num(8, "getBigInt64"); }
  str8() { return this.take(this.u8()); }
  str32() { return this.take(this.u32()); }
  rest() { return this.take(this.buf.length - this.off); }
}

/**
 * Encode a request frame: "\0REQ", u32 length, u32 CRC, u32 msgid, u8 cmd, payload.
 * @param {number} msgid @param {number} cmd @param {Uint8Array} [payload]
 * @returns {Uint8Array}
 */
export function encodeFrame(msgid, cmd, payload = new Uint8Array(0)) {
  const body = new Writer().u32(msgid).u8(cmd).raw(payload).bytes();
  return new Writer().raw(REQ).u32(body.length).u32(crc32(body)).raw(body).bytes();
}

/**
 * Encode a registration frame (no msgid). Types 3/4 carry an identity.
 * @param {number} type a ClientType
 * @param {{name: string|Uint8Array, token: string|Uint8Array}} [identity]
 */
export function encodeRegistration(type, identity) {
  const w = new Writer().u8(type);
  if (identity) {
    for (const part of [toBytes(identity.name), toBytes(identity.token)]) w.u64(part.length).raw(part);
  }
  const body = w.bytes();
  return new Writer().raw(REQ).u32(body.length).u32(crc32(body)).raw(body).bytes();
}

/**
 * Check magic, length and CRC of one frame and return its body.
 * @param {Uint8Array} bytes @returns {Uint8Array}
 */
function frameBody(bytes) {
  const r = new Reader(bytes);
  const magic = r.take(4);
  if (magic[0] !== 0 || magic[1] !== 0x52 || magic[2] !== 0x45) throw new Error("bad frame magic");
  const length = r.u32();
  const crc = r.u32();
  const body = r.take(length);
  if (r.off !== bytes.length) throw new Error("trailing bytes after frame");
  if (crc32(body) !== crc) throw new Error("frame CRC mismatch");
  return body;
}

/**
 * Decode one packet frame (either magic).
 * @param {Uint8Array} bytes @returns {{msgid: number, cmd: number, payload: Uint8Array}}
 */
export function decodeFrame(bytes) {
  const r = new Reader(frameBody(bytes));
  return { msgid: r.u32(), cmd: r.u8(), payload: r.rest() };
}

/**
 * @typedef {Object} Job
 * @property {string|Uint8Array} func
 * @property {string|Uint8Array} name
 * @property {string|Uint8Array} [workload]
 * @property {number|bigint} [schedAt] Unix seconds
 * @property {number} [count]
 * @property {number} [timeout] seconds, 0 = server default
 */

/**
 * Encode a job (PROTOCOL.md §7); the version byte is computed from count/timeout.
 * @param {Job} job @returns {Uint8Array}
 */
export function encodeJob(job) {
  const count = job.count ?? 0;
  const timeout = job.timeout ?? 0;
  const ver = (count > 0 ? 1 : 0) | (timeout > 0 ? 2 : 0);
  const w = new Writer().str8(job.func).str8(job.name).str32(job.workload).i64(job.schedAt ?? 0).u8(ver);
  if (ver & 1) w.i32(count);
  if (ver & 2) w.i32(timeout);
  return w.bytes();
}

/** Read a job with raw byte func/name from a reader. */
function readJob(r) {
  const func = r.str8(), name = r.str8(), workload = r.str32(), schedAt = Number(r.i64());
  const ver = r.u8();
  const count = ver === 1 || ver === 3 ? r.i32() : 0;
  const timeout = ver === 2 || ver === 3 ? r.i32() : 0;
  return { func, name, workload, schedAt, count, timeout };
}

/**
 * Decode a job; func and name become strings, workload stays a Uint8Array.
 * @param {Uint8Array} bytes
 * @returns {{func: string, name: string, workload: Uint8Array, schedAt: number, count: number, timeout: number}}
 */
export function decodeJob(bytes) {
  const r = new Reader(bytes);
  const job = readJob(r);
  if (r.off !== bytes.length) throw new Error("trailing bytes after job");
  return { ...job, func: fromUtf8.decode(job.func), name: fromUtf8.decode(job.name) };
}

const handleOf = (func, name) => new Writer().str8(func).str8(name).bytes();
const keyOf = (bytes) => Array.from(toBytes(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
const isPayload = (v) => v == null || typeof v === "string" || v instanceof ArrayBuffer || ArrayBuffer.isView(v);

/** First delay before a worker reconnects (ms); it doubles up to `maxBackoff`. */
const INITIAL_BACKOFF = 100;

/**
 * The registration identity from `{name, token}` (or the older `{identity}`), as the
 * Python library's `name=`/`token=`: both or neither.
 */
function identityOf(opts) {
  const identity = opts.identity ?? (opts.name != null || opts.token != null
    ? { name: opts.name, token: opts.token } : null);
  if (identity && (identity.name == null) !== (identity.token == null)) {
    throw new TypeError("a client name and a client token must be given together");
  }
  return identity && identity.name != null ? identity : null;
}

/**
 * One connection to the server: registration, msgid multiplexing, request timeouts,
 * keepalive. A worker's connection opens a new WebSocket session when one is lost.
 */
class Connection {
  /**
   * Connect and register.
   * @param {string} url ws:// or wss:// URL of the server
   * @param {object} [opts] see the constructor
   * @returns {Promise<this>} once the server answered the registration
   */
  static async connect(url, opts = {}) {
    const conn = new this(url, opts);
    await conn._open();
    return conn;
  }

  /**
   * @param {string} url
   * @param {{WebSocket?: any, timeout?: number, pingInterval?: number,
   *          name?: string|Uint8Array, token?: string|Uint8Array,
   *          identity?: {name: string|Uint8Array, token: string|Uint8Array}}} [opts]
   *   `timeout`: ms for connecting and for each request (default 10000); `pingInterval`:
   *   ms between keepalive PINGs (default 30000, 0 disables); `name`/`token`: an identity
   *   of the server's auth file (registration types 3/4).
   */
  constructor(url, opts = {}) {
    if (typeof url !== "string") throw new TypeError("use Class.connect(url, opts) or new Class(url, opts)");
    this.url = url;
    this.opts = opts;
    this.timeout = opts.timeout ?? 10000;
    this._WS = opts.WebSocket ?? globalThis.WebSocket;
    this._identity = identityOf(opts);
    /** @type {WebSocket|null} the current session's socket */
    this.ws = null;
    /** @type {number|null} the id the server gave the current session */
    this.connId = null;
    /** Sessions established so far. */
    this.sessions = 0;
    this._pending = new Map(); // msgid -> {resolve, reject, timer}
    this._reserved = new Set(); // msgids owned by grab slots
    this._nextId = 0;
    this._closedError = null; // set once the connection is closed for good
    this._sessionError = new Error("not connected");
    /** Resolves once the connection is closed for good. */
    this.closed = new Promise((resolve) => { this._onClosed = resolve; });
    const every = opts.pingInterval ?? 30000;
    if (every > 0) {
      this._pinger = setInterval(() => { if (this.connected) this.ping().catch(() => {}); }, every);
      this._pinger.unref?.();
    }
  }

  /** True while a session is registered and open. */
  get connected() { return this.ws !== null && this._sessionError === null; }

  /** Open a session: WebSocket, registration, then `_registered()` (subclasses). */
  async _open() {
    if (this._closedError) throw this._closedError;
    const WS = this._WS;
    if (!WS) throw new Error("no WebSocket implementation: pass {WebSocket} (e.g. from the 'ws' package)");
    const type = this.constructor.role + (this._identity ? 2 : 0);
    let ws;
    try {
      ws = new WS(this.url);
    } catch (err) {
      throw new Error(`cannot register with ${this.url}: ${err.message}`);
    }
    ws.binaryType = "arraybuffer";
    const session = { ws, registered: null };
    try {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no answer within ${this.timeout} ms`)), this.timeout);
        const settle = (fn) => (arg) => { clearTimeout(timer); fn(arg); };
        session.registered = { resolve: settle(resolve), reject: settle(reject) };
        ws.onopen = () => ws.send(encodeRegistration(type, this._identity ?? undefined));
        ws.onmessage = (ev) => this._receive(session, toBytes(ev.data));
        // Node 20's WebSocket reports a refused connection with "error" and no "close".
        ws.onerror = () => this._lost(session, new Error("WebSocket error"));
        ws.onclose = (ev) => this._lost(session, new Error(
          `connection closed${ev?.code && ev.code !== 1000 && ev.code !== 1005 ? ` (${ev.code})` : ""}`));
      });
    } catch (err) {
      session.registered = null;
      try { ws.close(); } catch { /* already closed */ }
      throw new Error(`cannot register with ${this.url}: ${err.message}`);
    }
    session.registered = null;
    this.ws = ws;
    this._session = session;
    this._sessionError = null;
    this.sessions += 1;
    try {
      await this._registered();
    } catch (err) {
      this._sessionError = err; // this session is given up: its close is not a loss
      ws.close();
      throw err;
    }
  }

  /** Called after each registration (workers re-register their functions). */
  async _registered() {}

  _receive(session, bytes) {
    if (session !== this._session && session.registered === null) return; // an old session
    try {
      if (session.registered) {
        const body = frameBody(bytes);
        if (body.length !== 5 || body[0] !== Cmd.DATA) throw new Error("bad registration reply");
        this.connId = new DataView(body.buffer, body.byteOffset + 1, 4).getUint32(0);
        session.registered.resolve();
        return;
      }
      const { msgid, cmd, payload } = decodeFrame(bytes);
      const waiter = this._pending.get(msgid);
      if (waiter) {
        this._pending.delete(msgid);
        clearTimeout(waiter.timer);
        waiter.resolve({ cmd, payload });
      } else {
        this._unsolicited(msgid, cmd, payload);
      }
    } catch (err) {
      this._lost(session, err);
      session.ws.close();
    }
  }

  /** Packets nobody waits for (late replies, pushes); subclasses override. */
  _unsolicited(msgid, cmd, payload) {}

  /** A session ended: fail its requests; close for good unless the subclass reconnects. */
  _lost(session, err) {
    if (session.registered) { session.registered.reject(err); return; }
    if (session !== this._session || this._sessionError) return;
    this._sessionError = err;
    for (const waiter of this._pending.values()) { clearTimeout(waiter.timer); waiter.reject(err); }
    this._pending.clear();
    if (!this._closedError && !this._reconnecting(err)) this._shutdown(err);
  }

  /** Whether to open a new session after losing one (workers may). */
  _reconnecting(err) { return false; }

  _shutdown(err) {
    if (this._closedError) return;
    this._closedError = err;
    this._sessionError ??= err;
    clearInterval(this._pinger);
    for (const waiter of this._pending.values()) { clearTimeout(waiter.timer); waiter.reject(err); }
    this._pending.clear();
    this._onClosed();
  }

  /** A msgid not in use by a pending request or a grab slot. */
  _msgid() {
    do this._nextId = (this._nextId % 0xffffff00) + 1;
    while (this._pending.has(this._nextId) || this._reserved.has(this._nextId));
    return this._nextId;
  }

  /** Send a frame without waiting for an answer. */
  _send(msgid, cmd, payload) {
    if (this._closedError) throw this._closedError;
    if (this._sessionError) throw this._sessionError;
    this.ws.send(encodeFrame(msgid, cmd, payload));
  }

  /**
   * Send a request on a fresh msgid and wait for the reply.
   * @returns {Promise<{cmd: number, payload: Uint8Array}>}
   */
  _request(cmd, payload, timeout = this.timeout) {
    if (this._closedError) return Promise.reject(this._closedError);
    if (this._sessionError) return Promise.reject(this._sessionError);
    const msgid = this._msgid();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(msgid);
        reject(new Error(`request ${cmd} timed out after ${timeout} ms`));
      }, timeout);
      this._pending.set(msgid, { resolve, reject, timer });
      this._send(msgid, cmd, payload);
    });
  }

  /** Send a request that must be answered with SUCCESS. */
  async _ok(cmd, payload) {
    const reply = await this._request(cmd, payload);
    if (reply.cmd === Cmd.NO_WORKER) throw new Error("rejected by the server (NO_WORKER)");
    if (reply.cmd !== Cmd.SUCCESS) throw new Error(`unexpected reply ${reply.cmd}`);
  }

  /** @returns {Promise<boolean>} true if the server answered PONG */
  async ping() { return (await this._request(Cmd.PING)).cmd === Cmd.PONG; }

  /** Close the connection for good; pending requests are rejected. */
  close() {
    this._shutdown(new Error("connection closed"));
    clearTimeout(this._retryTimer);
    this._retryWake?.();
    try { this.ws?.close(); } catch { /* already closed */ }
    return this.closed;
  }
}

/**
 * `(func, name, workload?, opts?)` or the older `(func, name, {workload, ...})`.
 * @returns {[Uint8Array|string|undefined, object]}
 */
function workloadAndOpts(workload, opts) {
  if (isPayload(workload)) return [workload ?? opts?.workload, opts ?? {}];
  return [workload.workload, workload];
}

/** A client-role connection: submit, run and manage jobs. Python: `Client`. */
export class PeriodicClient extends Connection {
  static role = ClientType.CLIENT;

  /**
   * Submit (or replace) the job `func/name`.
   * @param {string|Uint8Array} func @param {string|Uint8Array} name
   * @param {string|Uint8Array} [workload]
   * @param {{schedAt?: number, later?: number, timeout?: number, count?: number}} [opts]
   *   `schedAt`: Unix seconds (0 or the past: now); `later`: seconds from now;
   *   `timeout`: seconds a worker may hold it (0: the server's default).
   */
  async submitJob(func, name, workload, opts) {
    const [data, { schedAt = 0, later, timeout = 0, count = 0 }] = workloadAndOpts(workload, opts);
    const at = later != null ? Math.floor(Date.now() / 1000 + later) : schedAt;
    await this._ok(Cmd.SUBMIT_JOB, encodeJob({ func, name, workload: data, schedAt: at, timeout, count }));
  }

  /**
   * Run a job and wait for its result. Rejects with Error("no worker") when no worker
   * has the function; with `check`, rejects when the server answers `failed`, `expired`
   * or `removed` instead of a result (otherwise those come back as the result).
   * @param {string|Uint8Array} [workload]
   * @param {{timeout?: number, check?: boolean}} [opts] timeout in s, default 10
   * @returns {Promise<Uint8Array>}
   */
  async runJob(func, name, workload, opts) {
    const [data, { timeout = 10, check = false }] = workloadAndOpts(workload, opts);
    const wait = Math.max(this.timeout, (timeout + 5) * 1000);
    const reply = await this._request(Cmd.RUN_JOB, encodeJob({ func, name, workload: data, timeout }), wait);
    if (reply.cmd === Cmd.NO_WORKER) throw new Error("no worker");
    if (reply.cmd !== Cmd.DATA) throw new Error(`unexpected reply ${reply.cmd}`);
    if (check) {
      const word = fromUtf8.decode(reply.payload);
      if (word === "failed" || word === "expired" || word === "removed") {
        throw new Error(`job ${fromUtf8.decode(toBytes(func))}/${fromUtf8.decode(toBytes(name))} ${word}`);
      }
    }
    return reply.payload;
  }

  /**
   * Per-function counters, sorted by name.
   * @returns {Promise<Array<{func: string, workers: number, jobs: number,
   *   processing: number, locked: number, schedAt: number}>>}
   */
  async status() {
    const reply = await this._request(Cmd.STATUS);
    if (reply.cmd !== Cmd.DATA) throw new Error(`unexpected reply ${reply.cmd}`);
    const text = fromUtf8.decode(reply.payload);
    return text === "" ? [] : text.split("\n").map((line) => {
      const parts = line.split(",");
      const [workers, jobs, processing, locked, schedAt] = parts.slice(-5).map(Number);
      return { func: parts.slice(0, -5).join(","), workers, jobs, processing, locked, schedAt };
    });
  }

  /** Delete a job (RUN_JOB callers get `removed`). */
  async removeJob(func, name) { await this._ok(Cmd.REMOVE_JOB, handleOf(func, name)); }

  /** Forget a function and its jobs (the server ignores this while it has workers). */
  async dropFunc(func) { await this._ok(Cmd.DROP_FUNC, new Writer().str8(func).bytes()); }

  /** A server setting (`timeout`, `keepalive`, …; unknown keys read 0). @returns {Promise<number>} */
  async configGet(key) {
    const reply = await this._request(Cmd.CONFIG_GET, new Writer().str8(key).bytes());
    if (reply.cmd === Cmd.NO_WORKER) throw new Error("rejected by the server (NO_WORKER)");
    if (reply.cmd !== Cmd.CONFIG) throw new Error(`unexpected reply ${reply.cmd}`);
    return new Reader(reply.payload).u32();
  }

  /** Change a server setting (u32). */
  async configSet(key, value) {
    await this._ok(Cmd.CONFIG_SET, new Writer().str8(key).u32(value).bytes());
  }
}

/** A job handed to a worker handler. Python: `Job`. */
export class PeriodicJob {
  constructor(worker, raw) {
    this._worker = worker;
    this._func = raw.func;
    this._handle = handleOf(raw.func, raw.name);
    this.func = fromUtf8.decode(raw.func);
    this.name = fromUtf8.decode(raw.name);
    /** @type {Uint8Array} */
    this.workload = raw.workload;
    /** When the job was due, Unix seconds. */
    this.schedAt = raw.schedAt;
    this.count = raw.count;
    /** Seconds the server lets this worker hold the job. */
    this.timeout = raw.timeout;
    /** True once done / fail / schedLater was sent (or the job was parked on a lock). */
    this.reported = false;
  }

  /** @returns {string} the workload decoded as UTF-8 */
  text() { return fromUtf8.decode(this.workload); }

  /** @returns {any} the workload parsed as JSON */
  json() { return JSON.parse(this.text()); }

  _report(cmd, tail) {
    if (this.reported) return Promise.resolve();
    this.reported = true;
    return this._worker._ok(cmd, new Writer().raw(this._handle).raw(tail).bytes());
  }

  /** Finish the job with a result. @param {string|Uint8Array|object} [data] */
  done(data) { return this._report(Cmd.WORK_DONE, resultBytes(data)); }

  /** Fail the job (the server retries it; RUN_JOB callers get `failed`). */
  fail() { return this._report(Cmd.WORK_FAIL); }

  /** Run the job again after `delay` seconds, adding `step` to its count. */
  schedLater(delay, step = 0) {
    return this._report(Cmd.SCHED_LATER, new Writer().i64(delay).i16(step).bytes());
  }

  /** Stream a chunk to RECV_DATA subscribers (does not finish the job). */
  data(chunk) {
    return this._worker._ok(Cmd.WORK_DATA, new Writer().raw(this._handle).raw(resultBytes(chunk)).bytes());
  }

  /**
   * Take a place of `lock` (at most `count` holders). False: the server parked the job
   * until the lock frees up; stop working on it and report nothing.
   * @returns {Promise<boolean>}
   */
  async acquire(lock, count = 1) {
    const payload = new Writer().str8(lock).i16(count).raw(this._handle).bytes();
    const reply = await this._worker._request(Cmd.ACQUIRE, payload);
    if (reply.cmd !== Cmd.ACQUIRED) throw new Error(`unexpected reply ${reply.cmd}`);
    const ok = reply.payload[0] === 1;
    if (!ok) this.reported = true;
    return ok;
  }

  /** Give `lock` back before the job ends (done/fail release it anyway). */
  release(lock) {
    return this._worker._ok(Cmd.RELEASE, new Writer().str8(lock).raw(this._handle).bytes());
  }
}

/** Handler return values: bytes and strings as-is, other values as JSON. */
function resultBytes(value) {
  return isPayload(value) ? toBytes(value) : utf8.encode(JSON.stringify(value));
}

/**
 * A worker-role connection. Python: `Worker`.
 *
 * Either connect first (`await PeriodicWorker.connect(url, opts)`, then `addFunc`,
 * then `work(n)`) or, as in Python, build it, register functions and let `work(n)`
 * connect: `const w = new PeriodicWorker(url); w.addFunc("f", fn); await w.work(2)`.
 * A lost session is replaced (backoff from 0.1 s doubling up to `maxBackoff`), the
 * functions are registered again and the free slots grab again; `reconnect: false`
 * ends `work()` instead.
 * @callback Handler
 * @param {PeriodicJob} job
 * @returns {any} a value (done), a thrown error (fail), or nothing after job.done/fail/schedLater
 */
export class PeriodicWorker extends Connection {
  static role = ClientType.WORKER;

  /**
   * @param {string} url
   * @param {object} [opts] as for clients, plus `reconnect` (default true), `maxBackoff`
   *   (ms, default 3000), `onError(err, job)`, `onDisconnect(err)`, `onReconnect()`
   */
  constructor(url, opts = {}) {
    super(url, opts);
    this._funcs = new Map(); // func bytes (hex) -> {name, handler, broadcast, lock, lockCount}
    this._busy = new Set(); // slots running a job
    this._size = 0;
    this._stopping = false;
    this.reconnect = opts.reconnect ?? true;
    this.maxBackoff = opts.maxBackoff ?? 3000;
    /** Jobs being run right now. */
    this.running = 0;
    /** Called with (error, job) when a handler throws or a report fails. */
    this.onError = opts.onError ?? null;
    /** Called with the error when a session is lost (before reconnecting). */
    this.onDisconnect = opts.onDisconnect ?? null;
    /** Called after a lost session was replaced. */
    this.onReconnect = opts.onReconnect ?? null;
  }

  /**
   * Register `handler` for the function `name` (at once when connected, else on connect).
   * @param {string|Uint8Array} name @param {Handler} handler
   * @param {{broadcast?: boolean, lock?: string|Uint8Array, lockCount?: number}} [opts]
   *   `broadcast`: every worker gets each job; `lock`: take that lock (`lockCount`
   *   holders at most) before the handler runs; a job the server parks is skipped.
   */
  async addFunc(name, handler, { broadcast = false, lock = null, lockCount = 1 } = {}) {
    if (typeof handler !== "function") throw new TypeError("handler must be a function");
    const size = toBytes(name).length;
    if (size < 1 || size > 255) throw new RangeError(`function names are 1 to 255 bytes long, not ${size}`);
    const func = { name, handler, broadcast, lock, lockCount };
    this._funcs.set(keyOf(name), func);
    if (this.connected) await this._canDo(func);
  }

  /** Decorator-style registration, as Python's `@worker.func(name)`: returns a function
   *  that registers its argument and returns it. */
  func(name, opts = {}) {
    return (handler) => { this.addFunc(name, handler, opts).catch((err) => this.onError?.(err, null)); return handler; };
  }

  /** Register a broadcast function (every worker gets every job). Same as
   *  `addFunc(name, handler, {broadcast: true})`. */
  broadcast(name, handler) { return this.addFunc(name, handler, { broadcast: true }); }

  /** Unregister a function. */
  async removeFunc(name) {
    this._funcs.delete(keyOf(name));
    if (this.connected) await this._ok(Cmd.CANT_DO, new Writer().str8(name).bytes());
  }

  _canDo(func) {
    return this._ok(func.broadcast ? Cmd.BROADCAST : Cmd.CAN_DO, new Writer().str8(func.name).bytes());
  }

  /**
   * Take jobs on `size` grab slots (concurrent jobs), connecting first if needed.
   * @param {number} [size] @returns {Promise<void>} resolves once the worker is closed
   */
  async work(size = 1) {
    if (size < 1) throw new RangeError("size must be at least 1");
    if (this._size) throw new Error("this worker is already working");
    this._size = size;
    this._stopping = false;
    for (let i = 0; i < size; i++) this._reserved.add(this._msgid());
    if (this.connected) this._grabAll();
    else if (this.sessions === 0) await this._openWithRetry();
    return this.closed;
  }

  /** Take no new jobs; close once the running ones are reported. */
  async stop() {
    this._stopping = true;
    if (this.running === 0) await this.close();
    return this.closed;
  }

  async _registered() {
    for (const func of this._funcs.values()) await this._canDo(func);
    if (this._size) this._grabAll();
  }

  _grabAll() {
    for (const slot of this._reserved) if (!this._busy.has(slot)) this._send(slot, Cmd.GRAB_JOB);
  }

  _reconnecting(err) {
    if (!this.reconnect || this._stopping || this._closedError) return false;
    this.onDisconnect?.(err);
    this._openWithRetry().then(() => { if (this.connected) this.onReconnect?.(); }, () => {});
    return true;
  }

  /** Open a session, retrying with backoff until it works or the worker is closed. */
  async _openWithRetry() {
    let backoff = INITIAL_BACKOFF;
    for (;;) {
      try {
        await this._open();
        return;
      } catch (err) {
        if (this._closedError) return; // closed meanwhile
        if (!this.reconnect) { this._shutdown(err); throw err; }
        /** The last reason a session could not be opened. */
        this.lastError = err;
      }
      await new Promise((resolve) => {
        this._retryWake = resolve;
        this._retryTimer = setTimeout(resolve, backoff);
      });
      backoff = Math.min(backoff * 2, this.maxBackoff);
    }
  }

  _unsolicited(msgid, cmd, payload) {
    if (cmd !== Cmd.JOB_ASSIGN || !this._reserved.has(msgid)) return; // e.g. GRAB_JOB's SUCCESS
    const job = new PeriodicJob(this, readJob(new Reader(payload)));
    const func = this._funcs.get(keyOf(job._func));
    if (!func || this._stopping) {
      this._send(msgid, Cmd.JOB_UNASSIGNED);
      if (!this._stopping) setTimeout(() => this._regrab(msgid), 1000);
      return;
    }
    this._send(msgid, Cmd.JOB_ASSIGNED);
    this._busy.add(msgid);
    this.running += 1;
    this._run(func, job).finally(() => {
      this.running -= 1;
      this._busy.delete(msgid);
      if (this._stopping) {
        if (this.running === 0) this.close();
      } else {
        this._regrab(msgid);
      }
    });
  }

  async _run(func, job) {
    let result, error = null;
    try {
      if (func.lock != null && !(await job.acquire(func.lock, func.lockCount))) return;
      result = await func.handler(job);
    } catch (err) {
      error = err;
      this.onError?.(err, job);
    }
    if (job.reported) return;
    try {
      await (error ? job.fail() : job.done(result));
    } catch (err) {
      this.onError?.(err, job);
    }
  }

  _regrab(slot) {
    if (this.connected && this._reserved.has(slot)) {
      try { this._send(slot, Cmd.GRAB_JOB); } catch { /* the session just ended */ }
    }
  }
}

/** The names of the Python library: `Client`, `Worker`, `Job`. */
export { PeriodicClient as Client, PeriodicWorker as Worker, PeriodicJob as Job };

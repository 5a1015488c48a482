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
 * @example
 *   import { PeriodicClient, PeriodicWorker } from "/periodic.js";
 *   const worker = await PeriodicWorker.connect("ws://127.0.0.1:5001");
 *   await worker.addFunc("echo", (job) => job.text().toUpperCase());
 *   worker.work(2);
 *   const client = await PeriodicClient.connect("ws://127.0.0.1:5001");
 *   await client.submitJob("echo", "job-1", { workload: "hi" });
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

/** Shared connection: registration, msgid multiplexing, timeouts, keepalive. */
class Connection {
  /**
   * @param {string} url ws:// URL of the server
   * @param {number} type registration type
   * @param {{WebSocket?: any, timeout?: number, pingInterval?: number,
   *          identity?: {name: string, token: string}}} [opts]
   *   `timeout`: per-request timeout in ms (default 10000); `pingInterval`: ms between
   *   keepalive PINGs (default 30000, 0 disables); `identity`: authenticated registration.
   * @returns {Promise<this>} once the server answered the registration
   */
  static async connect(url, opts = {}) {
    const WS = opts.WebSocket ?? globalThis.WebSocket;
    if (!WS) throw new Error("no WebSocket implementation: pass {WebSocket} (e.g. from the 'ws' package)");
    const type = this.role + (opts.identity ? 2 : 0);
    const ws = new WS(url);
    ws.binaryType = "arraybuffer";
    const conn = new this(ws, opts);
    try {
      await new Promise((resolve, reject) => {
        conn._registered = { resolve, reject };
        ws.onopen = () => ws.send(encodeRegistration(type, opts.identity));
      });
    } catch (err) {
      throw new Error(`cannot register with ${url}: ${err.message}`);
    }
    return conn;
  }

  constructor(ws, opts = {}) {
    this.ws = ws;
    this.timeout = opts.timeout ?? 10000;
    /** @type {number|null} random id the server gave this connection */
    this.connId = null;
    this._pending = new Map(); // msgid -> {resolve, reject, timer}
    this._reserved = new Set(); // msgids owned by something else (grab slots)
    this._nextId = 0;
    this._closedError = null;
    /** Resolves once the connection is closed. */
    this.closed = new Promise((resolve) => { this._onClosed = resolve; });
    ws.onmessage = (ev) => this._receive(toBytes(ev.data));
    // Node 20's WebSocket reports a refused connection with "error" and no "close".
    ws.onerror = () => this._shutdown(new Error("WebSocket error"));
    ws.onclose = () => this._shutdown(new Error("connection closed"));
    const every = opts.pingInterval ?? 30000;
    if (every > 0) {
      this._pinger = setInterval(() => this.ping().catch(() => {}), every);
      this._pinger.unref?.();
    }
  }

  _receive(bytes) {
    try {
      if (this.connId === null) {
        const body = frameBody(bytes);
        if (body.length !== 5 || body[0] !== Cmd.DATA) throw new Error("bad registration reply");
        this.connId = new DataView(body.buffer, body.byteOffset + 1, 4).getUint32(0);
        this._registered.resolve();
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
      this._shutdown(err);
      this.ws.close();
    }
  }

  /** Packets nobody waits for (late replies, pushes); subclasses override. */
  _unsolicited(msgid, cmd, payload) {}

  _shutdown(err) {
    if (this._closedError) return;
    this._closedError = err;
    clearInterval(this._pinger);
    this._registered?.reject(err);
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
    this.ws.send(encodeFrame(msgid, cmd, payload));
  }

  /**
   * Send a request on a fresh msgid and wait for the reply.
   * @returns {Promise<{cmd: number, payload: Uint8Array}>}
   */
  _request(cmd, payload, timeout = this.timeout) {
    if (this._closedError) return Promise.reject(this._closedError);
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

  /** Close the connection; pending requests are rejected. */
  close() {
    this._shutdown(new Error("connection closed"));
    this.ws.close();
    return this.closed;
  }
}

/** A client-role connection: submit, run and manage jobs. */
export class PeriodicClient extends Connection {
  static role = ClientType.CLIENT;

  /**
   * Queue a job.
   * @param {string|Uint8Array} func @param {string|Uint8Array} name
   * @param {{workload?: string|Uint8Array, schedAt?: number, timeout?: number, count?: number}} [opts]
   */
  async submitJob(func, name, { workload, schedAt = 0, timeout = 0, count = 0 } = {}) {
    await this._ok(Cmd.SUBMIT_JOB, encodeJob({ func, name, workload, schedAt, timeout, count }));
  }

  /**
   * Run a job and wait for its result (the server answers `failed`, `expired`
   * or `removed` when it does not complete). Rejects with Error("no worker").
   * @param {{workload?: string|Uint8Array, timeout?: number}} [opts] timeout in s, default 10
   * @returns {Promise<Uint8Array>}
   */
  async runJob(func, name, { workload, timeout = 10 } = {}) {
    const wait = Math.max(this.timeout, (timeout + 5) * 1000);
    const reply = await this._request(Cmd.RUN_JOB, encodeJob({ func, name, workload, timeout }), wait);
    if (reply.cmd === Cmd.NO_WORKER) throw new Error("no worker");
    if (reply.cmd !== Cmd.DATA) throw new Error(`unexpected reply ${reply.cmd}`);
    return reply.payload;
  }

  /**
   * Per-function counters.
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

  /** Delete a job. */
  async removeJob(func, name) { await this._ok(Cmd.REMOVE_JOB, handleOf(func, name)); }

  /** Forget a function (only if it has no workers and no jobs). */
  async dropFunc(func) { await this._ok(Cmd.DROP_FUNC, new Writer().str8(func).bytes()); }
}

/** A job handed to a worker handler. */
class AssignedJob {
  constructor(worker, raw) {
    this._worker = worker;
    this._func = raw.func;
    this._handle = handleOf(raw.func, raw.name);
    this.func = fromUtf8.decode(raw.func);
    this.name = fromUtf8.decode(raw.name);
    /** @type {Uint8Array} */
    this.workload = raw.workload;
    this.schedAt = raw.schedAt;
    this.count = raw.count;
    this.timeout = raw.timeout;
    this.reported = false;
  }

  /** @returns {string} the workload decoded as UTF-8 */
  text() { return fromUtf8.decode(this.workload); }

  _report(cmd, tail) {
    this.reported = true;
    return this._worker._ok(cmd, new Writer().raw(this._handle).raw(tail).bytes());
  }

  /** Finish the job with a result. @param {string|Uint8Array} [data] */
  done(data) { return this._report(Cmd.WORK_DONE, resultBytes(data)); }

  /** Fail the job (the server retries it). */
  fail() { return this._report(Cmd.WORK_FAIL); }

  /** Run the job again after `delay` seconds, adding `step` to its count. */
  schedLater(delay, step = 0) {
    return this._report(Cmd.SCHED_LATER, new Writer().i64(delay).i16(step).bytes());
  }

  /** Stream a chunk to RECV_DATA subscribers (does not finish the job). */
  data(chunk) {
    return this._worker._ok(Cmd.WORK_DATA, new Writer().raw(this._handle).raw(resultBytes(chunk)).bytes());
  }
}

/** Handler return values: bytes and strings as-is, other values as JSON. */
function resultBytes(value) {
  if (value == null || typeof value === "string" || value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    return toBytes(value);
  }
  return utf8.encode(JSON.stringify(value));
}

/**
 * A worker-role connection.
 * @callback Handler
 * @param {AssignedJob} job
 * @returns {any} a value (done), a thrown error (fail), or nothing after job.done/fail/schedLater
 */
export class PeriodicWorker extends Connection {
  static role = ClientType.WORKER;

  constructor(ws, opts = {}) {
    super(ws, opts);
    this._handlers = new Map(); // func bytes (hex) -> handler
    /** Called with (error, job) when a handler throws. */
    this.onError = opts.onError ?? null;
  }

  /** Register a function. @param {string|Uint8Array} name @param {Handler} handler */
  async addFunc(name, handler) {
    this._handlers.set(keyOf(name), handler);
    await this._ok(Cmd.CAN_DO, new Writer().str8(name).bytes());
  }

  /** Register a broadcast function (every worker gets every job). */
  async broadcast(name, handler) {
    this._handlers.set(keyOf(name), handler);
    await this._ok(Cmd.BROADCAST, new Writer().str8(name).bytes());
  }

  /** Unregister a function. */
  async removeFunc(name) {
    await this._ok(Cmd.CANT_DO, new Writer().str8(name).bytes());
    this._handlers.delete(keyOf(name));
  }

  /**
   * Start taking jobs on `size` grab slots (concurrent jobs).
   * @param {number} [size] @returns {Promise<void>} resolves when the connection closes
   */
  work(size = 1) {
    for (let i = 0; i < size; i++) {
      const slot = this._msgid();
      this._reserved.add(slot);
      this._send(slot, Cmd.GRAB_JOB);
    }
    return this.closed;
  }

  _unsolicited(msgid, cmd, payload) {
    if (cmd !== Cmd.JOB_ASSIGN || !this._reserved.has(msgid)) return; // e.g. GRAB_JOB's SUCCESS
    const job = new AssignedJob(this, readJob(new Reader(payload)));
    const handler = this._handlers.get(keyOf(job._func));
    if (!handler) {
      this._send(msgid, Cmd.JOB_UNASSIGNED);
      setTimeout(() => this._regrab(msgid), 1000);
      return;
    }
    this._send(msgid, Cmd.JOB_ASSIGNED);
    this._run(handler, job).finally(() => this._regrab(msgid));
  }

  async _run(handler, job) {
    let result, error = null;
    try {
      result = await handler(job);
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
    if (!this._closedError) this._send(slot, Cmd.GRAB_JOB);
  }
}

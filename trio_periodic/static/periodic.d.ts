/**
 * Types of periodic.js, the dependency-free Periodic client and worker over WebSocket
 * (served beside it as /periodic.d.ts).
 *
 * @example
 *   import { Client, Worker } from "http://127.0.0.1:8080/periodic.js";
 *   const worker = new Worker("ws://127.0.0.1:5001");
 *   worker.addFunc("echo", (job) => job.text().toUpperCase());
 *   void worker.work(2);
 *   const client = await Client.connect("ws://127.0.0.1:5001");
 *   const result = await client.runJob("echo", "job-1", "hi");
 */

/** Bytes on the wire; strings are sent as UTF-8. */
export type Bytes = string | Uint8Array | ArrayBuffer | ArrayBufferView;

/** Command codes (PROTOCOL.md §8). */
export declare const Cmd: Readonly<{
  NOOP: 0; GRAB_JOB: 1; SCHED_LATER: 2; WORK_DONE: 3; WORK_FAIL: 4; JOB_ASSIGN: 5;
  NO_JOB: 6; CAN_DO: 7; CANT_DO: 8; PING: 9; PONG: 10; SLEEP: 11; UNKNOWN: 12;
  SUBMIT_JOB: 13; STATUS: 14; DROP_FUNC: 15; SUCCESS: 16; REMOVE_JOB: 17; DUMP: 18;
  LOAD: 19; SHUTDOWN: 20; BROADCAST: 21; CONFIG_GET: 22; CONFIG_SET: 23; CONFIG: 24;
  RUN_JOB: 25; ACQUIRED: 26; ACQUIRE: 27; RELEASE: 28; NO_WORKER: 29; DATA: 30;
  RECV_DATA: 31; WORK_DATA: 32; JOB_ASSIGNED: 33; JOB_UNASSIGNED: 34;
}>;

/** Registration types (PROTOCOL.md §4.1); 3 and 4 carry an identity. */
export declare const ClientType: Readonly<{
  CLIENT: 1; WORKER: 2; AUTH_CLIENT: 3; AUTH_WORKER: 4;
}>;

/** A job as encoded on the wire (PROTOCOL.md §7). */
export interface WireJob {
  func: Bytes;
  name: Bytes;
  workload?: Bytes | null;
  /** Unix seconds; 0 = now. */
  schedAt?: number | bigint;
  count?: number;
  /** Seconds; 0 = the server's default. */
  timeout?: number;
}

/** A decoded job: names as text, the workload as bytes. */
export interface DecodedJob {
  func: string;
  name: string;
  workload: Uint8Array;
  schedAt: number;
  count: number;
  timeout: number;
}

export declare function crc32(bytes: Uint8Array): number;
export declare function encodeFrame(msgid: number, cmd: number, payload?: Uint8Array): Uint8Array;
export declare function encodeRegistration(
  type: number,
  identity?: { name: Bytes; token: Bytes },
): Uint8Array;
export declare function decodeFrame(bytes: Uint8Array): {
  msgid: number;
  cmd: number;
  payload: Uint8Array;
};
export declare function encodeJob(job: WireJob): Uint8Array;
export declare function decodeJob(bytes: Uint8Array): DecodedJob;

/** Options of every connection. */
export interface ConnectOptions {
  /** A WebSocket class (e.g. from the `ws` package); default: `globalThis.WebSocket`. */
  WebSocket?: unknown;
  /** Milliseconds for connecting and for each request (default 10000). */
  timeout?: number;
  /** Milliseconds between keepalive PINGs (default 30000; 0 disables them). */
  pingInterval?: number;
  /** An identity of the server's auth file (registration types 3/4): both or neither. */
  name?: Bytes;
  token?: Bytes;
  /** The older spelling of `name`/`token`. */
  identity?: { name: Bytes; token: Bytes };
}

declare class Connection {
  /** Connect and register; rejects when the server cannot be reached or does not answer. */
  static connect<T extends Connection>(
    this: new (url: string, opts?: any) => T,
    url: string,
    opts?: ConnectOptions & WorkerOptions,
  ): Promise<T>;
  constructor(url: string, opts?: ConnectOptions);
  readonly url: string;
  /** Milliseconds for each request. */
  timeout: number;
  /** The id the server gave the current session. */
  readonly connId: number | null;
  /** Sessions established so far. */
  readonly sessions: number;
  /** True while a session is registered and open. */
  readonly connected: boolean;
  /** Resolves once the connection is closed for good. */
  readonly closed: Promise<void>;
  /** True if the server answered PONG. */
  ping(): Promise<boolean>;
  /** Close for good; pending requests are rejected. */
  close(): Promise<void>;
}

export interface SubmitOptions {
  /** Unix seconds (0 or the past: now). */
  schedAt?: number;
  /** Seconds from now (instead of `schedAt`). */
  later?: number;
  /** Seconds a worker may hold the job (0: the server's default). */
  timeout?: number;
  count?: number;
  /** The older way to pass the workload. */
  workload?: Bytes;
}

export interface RunOptions {
  /** The job's timeout and how long the server waits for the result, seconds (default 10). */
  timeout?: number;
  /** Reject when the server answers `failed`, `expired` or `removed` (default false). */
  check?: boolean;
  /** The older way to pass the workload. */
  workload?: Bytes;
}

export interface FuncStatus {
  func: string;
  workers: number;
  jobs: number;
  processing: number;
  locked: number;
  /** The earliest pending job's Unix seconds (the server's now if none). */
  schedAt: number;
}

/** A client-role connection: submit, run and manage jobs (Python: `Client`). */
export declare class PeriodicClient extends Connection {
  static readonly role: 1;
  submitJob(func: Bytes, name: Bytes, workload?: Bytes | null, opts?: SubmitOptions): Promise<void>;
  submitJob(func: Bytes, name: Bytes, opts: SubmitOptions): Promise<void>;
  runJob(func: Bytes, name: Bytes, workload?: Bytes | null, opts?: RunOptions): Promise<Uint8Array>;
  runJob(func: Bytes, name: Bytes, opts: RunOptions): Promise<Uint8Array>;
  status(): Promise<FuncStatus[]>;
  removeJob(func: Bytes, name: Bytes): Promise<void>;
  dropFunc(func: Bytes): Promise<void>;
  configGet(key: string): Promise<number>;
  configSet(key: string, value: number): Promise<void>;
}

/** A job handed to a worker's handler (Python: `Job`). */
export declare class PeriodicJob {
  readonly func: string;
  readonly name: string;
  readonly workload: Uint8Array;
  /** When the job was due, Unix seconds. */
  readonly schedAt: number;
  readonly count: number;
  /** Seconds the server lets this worker hold the job. */
  readonly timeout: number;
  /** True once done / fail / schedLater was sent (or the job was parked on a lock). */
  readonly reported: boolean;
  /** The workload decoded as UTF-8. */
  text(): string;
  /** The workload parsed as JSON. */
  json(): any;
  /** Finish the job; objects other than bytes and strings are sent as JSON. */
  done(data?: Bytes | object | null): Promise<void>;
  /** Fail the job (the server retries it; RUN_JOB callers get `failed`). */
  fail(): Promise<void>;
  /** Run the job again after `delay` seconds, adding `step` to its count. */
  schedLater(delay: number, step?: number): Promise<void>;
  /** Stream a chunk to RECV_DATA subscribers. */
  data(chunk: Bytes | object): Promise<void>;
  /** Take a place of `lock`; false: the job is parked, report nothing. */
  acquire(lock: Bytes, count?: number): Promise<boolean>;
  release(lock: Bytes): Promise<void>;
}

/** A handler's return value is the result (done); a thrown error fails the job. */
export type Handler = (job: PeriodicJob) => unknown;

export interface FuncOptions {
  /** Every worker registered for the function gets each job. */
  broadcast?: boolean;
  /** Take this lock before the handler runs (`lockCount` holders at most). */
  lock?: Bytes | null;
  lockCount?: number;
}

export interface WorkerOptions extends ConnectOptions {
  /** Open a new session when one is lost (default true). */
  reconnect?: boolean;
  /** Longest wait between reconnection attempts, ms (default 3000; the first is 100). */
  maxBackoff?: number;
  onError?: ((error: unknown, job: PeriodicJob | null) => void) | null;
  onDisconnect?: ((error: Error) => void) | null;
  onReconnect?: (() => void) | null;
}

/** A worker-role connection (Python: `Worker`). */
export declare class PeriodicWorker extends Connection {
  static readonly role: 2;
  constructor(url: string, opts?: WorkerOptions);
  reconnect: boolean;
  maxBackoff: number;
  /** Jobs being run right now. */
  readonly running: number;
  /** The last reason a session could not be opened. */
  readonly lastError?: Error;
  onError: ((error: unknown, job: PeriodicJob | null) => void) | null;
  onDisconnect: ((error: Error) => void) | null;
  onReconnect: (() => void) | null;
  /** Register `handler` for `name` (at once when connected, else on connect). */
  addFunc(name: Bytes, handler: Handler, opts?: FuncOptions): Promise<void>;
  /** Decorator-style registration, as Python's `@worker.func(name)`. */
  func(name: Bytes, opts?: FuncOptions): <H extends Handler>(handler: H) => H;
  /** The same as `addFunc(name, handler, {broadcast: true})`. */
  broadcast(name: Bytes, handler: Handler): Promise<void>;
  removeFunc(name: Bytes): Promise<void>;
  /** Take jobs on `size` slots, connecting first if needed; resolves once closed. */
  work(size?: number): Promise<void>;
  /** Take no new jobs; close once the running ones are reported. */
  stop(): Promise<void>;
}

export {
  PeriodicClient as Client,
  PeriodicWorker as Worker,
  PeriodicJob as Job,
};

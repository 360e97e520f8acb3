/**
 * The errors the SDK rejects with. A refusal by the server is a {@link ServerError} carrying
 * the server's exact `code` (docs/PROTOCOL.md, "Errors"); anything the client itself could not
 * do is a {@link ClientError}.
 */
import type { ErrorCode, ReqId } from './protocol.js';

/** An `error` frame from the server. Act on `code` and `retryable`; `message` is for people. */
export class ServerError extends Error {
  /** The server's error code, as on the wire. */
  readonly code: ErrorCode;
  /** Whether sending the same command again later may succeed. */
  readonly retryable: boolean;
  readonly reqId: ReqId | undefined;
  readonly clientMsgId: string | undefined;

  constructor(frame: { code: ErrorCode; message: string; retryable: boolean; req_id?: ReqId | null; client_msg_id?: string | null }) {
    super(`${frame.code}: ${frame.message}`);
    this.name = 'ServerError';
    this.code = frame.code;
    this.retryable = frame.retryable;
    this.reqId = frame.req_id ?? undefined;
    this.clientMsgId = frame.client_msg_id ?? undefined;
  }
}

/**
 * Why the client could not carry out a call: `disconnected` (the connection went before the
 * reply; the call may be retried once connected), `not_connected`, `timeout` (no reply in time),
 * `closed` (the client was closed or stopped for good), `frame_too_large` (the command would exceed
 * the protocol's 65536-byte message limit, for which the server closes the connection with
 * 1009: it is never written).
 */
export type ClientErrorCode = 'disconnected' | 'not_connected' | 'timeout' | 'closed' | 'frame_too_large';

export class ClientError extends Error {
  readonly code: ClientErrorCode;

  constructor(code: ClientErrorCode, message: string) {
    super(`${code}: ${message}`);
    this.name = 'ClientError';
    this.code = code;
  }
}

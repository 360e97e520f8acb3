/** The protocol's limits that a client checks before writing. */

/** The largest WebSocket message the protocol accepts (`limits.max_message_bytes` is at most this). */
export const MAX_FRAME_BYTES = 65_536;

/** Whether a frame is over {@link MAX_FRAME_BYTES} (UTF-8). */
export function frameTooLarge(frame: string): boolean {
  return frame.length * 3 > MAX_FRAME_BYTES && new TextEncoder().encode(frame).length > MAX_FRAME_BYTES;
}

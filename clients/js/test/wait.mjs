// Tests never sleep a fixed time to wait for something: they poll a condition with a deadline.

/** Polls `condition` until it holds (and returns its value), failing after `timeoutMs`. */
export async function waitFor(condition, what = 'condition', timeoutMs = 3000, everyMs = 5) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

// The HTTP API as this client calls it: publishes and reads on one-way
// transports, and the probes SSE and long polling start with.

import { HeraldError } from "./errors.js";

export interface RequestOptions {
  token?: string | undefined;
  query?: [string, string][];
  body?: unknown;
  /** Milliseconds before the request is given up (`timeout`). */
  timeout: number;
  signal?: AbortSignal;
}

export function endpoint(baseUrl: string, path: string, query: [string, string][] = []): string {
  const url = new URL(path, baseUrl.endsWith("/") ? baseUrl : baseUrl + "/");
  for (const [key, value] of query) url.searchParams.append(key, value);
  return url.toString();
}

export function authorization(token: string | undefined): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** A JSON request; an error answer becomes a HeraldError with the server's code and status. */
export async function requestJson<T>(
  fetchImpl: typeof fetch,
  method: "GET" | "POST",
  url: string,
  options: RequestOptions,
): Promise<T> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), options.timeout);
  const onAbort = () => abort.abort();
  options.signal?.addEventListener("abort", onAbort);
  let response: Response;
  try {
    response = await fetchImpl(url, {
      method,
      headers: {
        ...authorization(options.token),
        ...(options.body !== undefined ? { "content-type": "application/json" } : {}),
      },
      body: options.body !== undefined ? JSON.stringify(options.body) : null,
      cache: "no-store",
      signal: abort.signal,
    });
  } catch (error) {
    throw abort.signal.aborted && !options.signal?.aborted
      ? new HeraldError("timeout", `no answer from ${method} ${url} within ${options.timeout} ms`)
      : new HeraldError("connection_lost", `${method} ${url} failed: ${describe(error)}`);
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
  let body: unknown;
  try {
    body = await response.json();
  } catch {
    if (response.ok) throw new HeraldError("bad_response", `${method} ${url}: the answer is not JSON`, response.status);
  }
  if (!response.ok) throw errorOf(response.status, body);
  return body as T;
}

export function errorOf(status: number, body: unknown): HeraldError {
  const { code, message } = (body ?? {}) as { code?: unknown; message?: unknown };
  return new HeraldError(
    typeof code === "string" ? code : `http_${status}`,
    typeof message === "string" ? message : `the server answered ${status}`,
    status,
  );
}

export function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Types of the Cascade browser client (cascade.js, dependency-free ES5), written by hand
 * beside the script it describes. The wire contract is docs/PROTOCOL.md.
 */

declare namespace Cascade {
  /** A rung of the transport ladder, best first. */
  type Transport = 'websocket' | 'sse' | 'longpoll' | 'poll';

  /** Any value JSON can carry: what a message's `data` is. */
  type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

  /** A delivered message (docs/PROTOCOL.md, "The message object"). */
  interface Message<T = Json> {
    channel: string;
    epoch: string;
    offset: number;
    /** When the gateway accepted it, in Unix milliseconds. */
    ts: number;
    data: T;
    /** The sender of a client's publish, set by the gateway (absent on a backend's). */
    from?: { user: string | null; client: string | null };
    /** On a join or leave event of a channel that announces them (`data` is null). */
    presence?: 'join' | 'leave';
  }

  /** Where a published message landed. */
  interface Position {
    channel: string;
    epoch: string;
    offset: number;
  }

  /** History was lost before `first`: messages of `channel` resume there. */
  interface Gap {
    channel: string;
    epoch: string;
    first: number;
  }

  /** An error the client reports; `channel` when the gateway refused that channel. */
  interface CascadeError {
    /** Machine-readable: `forbidden`, `token_invalid`, `token_unavailable`, `timeout`, … */
    code: string;
    message: string;
    channel?: string;
  }

  /**
   * How the tabs of an origin share one connection: `true` (the default) through a
   * SharedWorker running cascade.js where the browser has one (a lone tab keeps a
   * connection of its own until a second tab comes), else a leader tab elected with a Web
   * Lock (without Web Locks, a lease in localStorage) and reached over a BroadcastChannel
   * (without one, `storage` events), else one connection per tab; `'leader'` skips the
   * SharedWorker; `false` opts out (one connection per tab).
   */
  type Share = boolean | 'leader';

  /** How this tab's connection is shared: see `Client.shareRole`. */
  type ShareRole = 'worker' | 'leader' | 'follower';

  /**
   * Per-rung deadlines, in milliseconds. A deadline whose timer fires late (a throttled or
   * frozen background tab) starts over instead of failing the connection.
   */
  interface Timeouts {
    websocket?: number;
    sse?: number;
    longpoll?: number;
    poll?: number;
    negotiate?: number;
    publish?: number;
    rpc?: number;
    token?: number;
  }

  /** Options of `Cascade.connect`. */
  interface Options {
    /** A client token, sent as `token=` on every request. */
    token?: string;
    /** Extra query parameters sent on every request (a backend's connect hook reads them). */
    query?: Record<string, string>;
    /**
     * Asked for a token when there is none or the gateway says it expired: call
     * `done(err, token)`, or return a promise of the token.
     */
    getToken?: (done: (err: unknown, token?: string) => void) => void | PromiseLike<string>;
    /** The rungs allowed, e.g. `['longpoll']`. */
    transports?: Transport[];
    /** Channels to follow from the start. */
    channels?: string[];
    timeouts?: Timeouts;
    /** How often to try better rungs after a fallback, in milliseconds. */
    probeIntervalMs?: number;
    minBackoffMs?: number;
    maxBackoffMs?: number;
    /** Start from the rung that last worked in this tab (sessionStorage). */
    remember?: boolean;
    /**
     * The head start, in milliseconds, a WebSocket or SSE attempt gets before long polling
     * starts beside it and carries messages until the stream proves itself (default 250;
     * at least three `/negotiate` round trips); `false` (or a negative number) waits for
     * each rung's deadline instead.
     */
    raceDelayMs?: number | false;
    /** One connection for all tabs of this origin (default `true`); see `Share`. */
    share?: Share;
    /**
     * The URL of cascade.js for the SharedWorker (same origin as the page); by default
     * the `src` of the script tag that loaded the client.
     */
    workerUrl?: string;
  }

  /** The events a client emits, and what each handler gets. */
  interface Events {
    connect: (info: { transport: Transport }) => void;
    disconnect: (info: { reason: string; retryMs: number | null }) => void;
    transport: (name: Transport) => void;
    gap: (gap: Gap) => void;
    error: (error: CascadeError) => void;
    message: (message: Message) => void;
    /** The gateway began a client session (backend hooks): its id. */
    session: (clientId: string) => void;
  }

  /** A connection to a gateway; create it with `Cascade.connect`. */
  interface Client {
    /** The rung in use (by the shared connection, when shared), or null while disconnected. */
    readonly transport: Transport | null;
    /**
     * How the connection is shared: `'worker'` (a SharedWorker holds it, or this tab's own
     * while no other tab needs it), `'leader'` (this tab holds it for the others),
     * `'follower'` (another tab does), or null (this tab's own).
     */
    readonly shareRole: ShareRole | null;
    /** Calls `fn(data, message)` for every message on `channel`, from now on. */
    subscribe<T = Json>(channel: string, fn?: (data: T, message: Message<T>) => void): this;
    /** Removes `fn` (or every handler) from `channel`; the last one leaves the channel. */
    unsubscribe(channel: string, fn?: (data: any, message: Message<any>) => void): this;
    /** Who is in `channel` (its namespace must keep presence). */
    presence(
      channel: string,
      callback?: (
        err: { code: string; message: string } | null,
        answer?: {
          channel: string;
          clients: { user: string | null; client: string; transport: string }[];
        },
      ) => void,
    ): this;
    /** Publishes `data` (any JSON value) to `channel`. */
    publish(
      channel: string,
      data: Json,
      callback?: (err: CascadeError | null, position?: Position) => void,
    ): this;
    /**
     * Calls the application's backend (its rpc hook): `method` with `params`, answered
     * with the backend's result; a refusal is the backend's `code` and `message`.
     */
    rpc<R = Json>(
      method: string,
      params: Json | undefined,
      callback: (err: CascadeError | null, result?: R) => void,
    ): this;
    /** The same, as a Promise of the result. */
    rpc<R = Json>(method: string, params?: Json): Promise<R>;
    /** The id of this client's session (what backend hooks receive), once it has one. */
    readonly clientId: string | null;
    /** Adds a handler. */
    on<E extends keyof Events>(event: E, fn: Events[E]): this;
    /** Removes a handler added with `on`. */
    off<E extends keyof Events>(event: E, fn: Events[E]): this;
    /** Closes every connection and stops reconnecting. */
    close(): void;
  }

  /** Connects to the gateway at `url` (`''` for this page's origin). */
  function connect(url: string, options?: Options): Client;

  /** The client's version. */
  const version: string;
  /** Every rung, best first. */
  const transports: Transport[];
}

export = Cascade;
export as namespace Cascade;

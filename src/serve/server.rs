//! The proxy at work: accept a request, route it, then choose a key → forward →
//! classify → record, again with the next key while that helps, and deliver.
//!
//! Invariants: the pool lock is held only for a policy decision, never across network
//! I/O; the clock is read here and passed to the policy; a retry happens only before the
//! first byte of a response went to the client; every response, ours or the upstream's,
//! is written by `stream.rs`.

use std::io::Write;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use ureq::BodyReader;
use ureq::http::HeaderMap;

use crate::front::config::{Config, MAX_DEFAULT_ATTEMPTS};
use crate::front::console::outln;
use crate::keys::key;
use crate::keys::store::{self, KeyEntry, KeysFile, Source};
use crate::outbound::credit;
use crate::outbound::upstream::{self, Upstream};
use crate::persist::shared::TeamReport;
use crate::persist::state;
#[cfg(feature = "redis")]
use crate::persist::team::{Announce, Team};
use crate::persist::watch::{self, EnvKeys, Watch};
use crate::rotation::attempts::{self, Attempts, Next, Rules, View, no_keys_hint};
use crate::rotation::classify::{self, Verdict};
use crate::rotation::policy::{Budget, Change, Outcome, Outlook, Scope};
use crate::rotation::pool::{Now, Pool, PoolReport};
use crate::rotation::pools::{self, Member, Pools, Upstreams};
use crate::rotation::provider::Provider;
use crate::rotation::waiting::{Room, Seen};
use crate::serve::access;
use crate::serve::browser::{self, Caller};
use crate::serve::connection::{self, BodyError, Conn};
use crate::serve::error::{self, Error, Reply, Shape};
use crate::serve::held::{Claim, Held};
use crate::serve::http1::Head;
use crate::serve::metrics::Metrics;
use crate::serve::route;
use crate::serve::status::{self, About, PoolAbout, Route};
use crate::serve::stream::{self, End, Framing};
use crate::serve::workers;

/// Largest upstream error body kept to inspect (and to pass on if it is the answer).
const MAX_INSPECTED_BODY: u64 = 1024 * 1024;
/// Upstream bodies with a `Content-Length` up to this size are read whole before the
/// client gets the head: a body that breaks off is then retried with the next key instead
/// of leaving the client waiting for bytes that never come. Larger ones stream.
const MAX_BUFFERED_BODY: u64 = 4 * 1024 * 1024;
/// Most bytes held while looking for a stream's first event (keep-alive comments are a
/// few dozen bytes each): past this the stream goes on to the client unexamined.
const MAX_HELD_STREAM_START: usize = 64 * 1024;

/// Everything a request worker needs, shared by all of them.
struct Proxy {
    config: Config,
    /// Every pool; a request picks one by its path's first segment.
    pools: Arc<Pools>,
    upstream: Upstream,
    metrics: Metrics,
    /// The memory request bodies hold, all requests together (`--max-body-memory`).
    held: Arc<Held>,
    started: Instant,
    /// The link to the other instances sharing the pool (`--redis`).
    #[cfg(feature = "redis")]
    team: Option<Arc<Team>>,
    /// Requests being handled now (for --max-requests and a graceful stop).
    in_flight: AtomicUsize,
    /// A stop signal came: new requests get 503.
    stopping: AtomicBool,
    /// Each key's credit, for the pool's answer to `GET /key`.
    credits: credit::Cache,
}

/// Binds, prints the start line, and serves until accepting fails.
pub fn serve(config: Config, keys: KeysFile, env: EnvKeys) -> Result<(), Error> {
    raise_open_file_limit();
    let addr = format!("{}:{}", config.host, config.port);
    let listener = listen(&config.host, config.port).map_err(|source| Error::Bind {
        addr: addr.clone(),
        source,
    })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;

    for warning in &keys.warnings {
        warn!("{warning}");
    }
    let from = match keys.source {
        Source::Env(variable) => variable.to_string(),
        Source::File | Source::Nothing => keys.path.display().to_string(),
    };
    let state_file = state::path_for(&keys.path);
    let (remembered, problem) = state::load(&state_file);
    let upstreams = Upstreams {
        default: config.provider,
        default_url: config.upstream.clone(),
        overrides: config.pool_upstreams.clone(),
    };
    let count = keys.entries.len();
    let pools = Pools::new(
        keys.entries,
        upstreams,
        &remembered,
        config.strategy,
        Now::read(),
    )
    .map_err(|e| Error::Config(format!("keys file '{}': {e}", keys.path.display())))?;
    let pools = Arc::new(pools);
    let all = pools.all();
    let several = if all.len() > 1 {
        format!(" in {} pools ({})", all.len(), pools.names())
    } else {
        String::new()
    };
    // The one line a user (and a test) reads to know where we are.
    outln!(
        "roo-proxy {} listening on http://{local} → {} with {count} key{}{several} from {from}",
        env!("CARGO_PKG_VERSION"),
        config.upstream,
        if count == 1 { "" } else { "s" },
    );
    for member in all.iter().skip(1) {
        info!(
            "pool {} ({}) at http://{local}/{}/ → {} with {} key(s)",
            member.name,
            member.provider,
            member.name,
            member.upstream,
            member.pool.len()
        );
    }
    for (name, _) in &config.pool_upstreams {
        if !all.iter().any(|m| m.name == *name) {
            warn!(
                "--pool-upstream names the pool '{name}', which has no keys yet; it is used when the keys file gives that pool keys"
            );
        }
    }
    let _ = std::io::stdout().flush();
    if count == 0 {
        warn!("{}", no_keys_hint(&keys.path));
    } else if keys.source == Source::File && keys.seal.is_none() {
        info!(
            "the keys file is plain text; `roo-proxy keys encrypt` keeps your keys from tools that read your files (README: Protecting your keys)"
        );
    }

    if let Some(problem) = problem {
        warn!("{problem}");
    }
    drop(all);
    #[cfg(feature = "redis")]
    let team = match &config.redis {
        Some(url) => {
            let announce = Announce {
                listen: local.to_string(),
                started_ms: crate::rotation::pool::epoch_ms(SystemTime::now()),
            };
            let shared: Arc<dyn crate::rotation::pools::Sharing> = Arc::clone(&pools) as _;
            // Its errors (a CA file that cannot be used) are the user's to fix.
            Some(
                Team::start(url, config.redis_ca.as_deref(), shared, announce)
                    .map_err(|e| Error::Config(e.to_string()))?,
            )
        }
        None => None,
    };
    let keys_file = keys.path;
    let watch = Watch {
        pools: Arc::clone(&pools),
        keys_file: keys_file.clone(),
        state_file,
        seen: (keys.source == Source::File).then_some(keys.bytes),
        env,
        seal: keys.seal,
    };
    watch.spawn().map_err(Error::Serve)?;
    let git_file = keys_file.clone();
    // Spawning git takes milliseconds; serve meanwhile.
    let _ = thread::Builder::new()
        .name("git-check".into())
        .spawn(move || store::git_warning(&git_file).inspect(|w| warn!("{w}")));

    let proxy = Arc::new(Proxy {
        pools,
        upstream: Upstream::new(config.upstream_timeouts),
        held: Held::new(config.max_body_memory),
        config,
        metrics: Metrics::default(),
        started: Instant::now(),
        #[cfg(feature = "redis")]
        team,
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        credits: credit::Cache::default(),
    });
    on_shutdown(Arc::clone(&proxy), keys_file);
    let settings = connection::Settings {
        limits: proxy.config.limits,
        client_timeout: proxy.config.client_timeout,
        idle_timeout: proxy.config.idle_timeout,
        shape_for: {
            let proxy = Arc::clone(&proxy);
            Arc::new(move |target| match target {
                Some(target) => proxy.shape_for(target),
                None => proxy.config.provider.shape(),
            })
        },
    };
    let max_connections = proxy.config.max_connections;
    Err(Error::Serve(workers::run(
        listener,
        settings,
        max_connections,
        move |head, conn| proxy.handle(head, conn),
    )))
}

/// A listening socket whose accepted connections have TCP_NODELAY: they inherit it from
/// the listener on Linux (and `connection::serve` sets it again). Without it, a stream's
/// first event waits for the client's delayed ACK of the head (~40 ms, measured).
fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut last = std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "the host has no address",
    );
    for addr in (host, port).to_socket_addrs()? {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        match socket.bind(&addr.into()).and_then(|()| socket.listen(1024)) {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Each connection takes a descriptor (and an upstream one while it is forwarded); the
/// usual soft limit of 1,024 is below what `--max-connections` allows. Raised to the hard
/// limit; where there is no such limit (Windows), nothing to do.
fn raise_open_file_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => debug!("open-file limit: {limit}"),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
}

/// On SIGINT/SIGTERM: answer new requests 503, let requests in flight finish (up to
/// `--shutdown-grace`), save key state, exit 0. A second signal saves and exits at once.
fn on_shutdown(proxy: Arc<Proxy>, keys_file: PathBuf) {
    let handler = move || {
        if proxy.stopping.swap(true, Ordering::SeqCst) {
            warn!("second stop signal: exiting now");
            watch::save_now(&proxy.pools, &keys_file);
            std::process::exit(130);
        }
        let grace = proxy.config.shutdown_grace;
        // This request is not one of them: the handler runs on its own thread.
        let waiting = proxy.in_flight.load(Ordering::SeqCst);
        info!(
            "stopping: {waiting} request(s) in flight get up to {} s to finish",
            grace.as_secs()
        );
        let proxy = Arc::clone(&proxy);
        let keys_file = keys_file.clone();
        // Return at once, so that a second signal is heard.
        let _ = thread::Builder::new().name("stop".into()).spawn(move || {
            let deadline = Instant::now() + grace;
            while proxy.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let left = proxy.in_flight.load(Ordering::SeqCst);
            if left > 0 {
                warn!("stopping with {left} request(s) still in flight after the grace period");
            }
            watch::save_now(&proxy.pools, &keys_file);
            info!("stopped");
            std::process::exit(0);
        });
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        warn!("cannot handle stop signals ({e}); key state is saved every second instead");
    }
}

/// The request facts the log line and the attempts need.
struct Incoming<'a> {
    method: &'a str,
    target: &'a str,
    started: Instant,
    /// What a browser learns of the caller's origin: on every answer (`browser.rs`).
    cors: &'a [(String, String)],
    /// The error shape of every answer the proxy makes itself: the provider's.
    shape: Shape,
    /// The pool the path's first segment names, and the path within it (`None`: the
    /// bare base URL, or a name that is no pool here), looked up once per request.
    named: Option<Named<'a>>,
}

/// A pool a request's path names, and the rest of the path.
type Named<'a> = (Arc<Member>, std::borrow::Cow<'a, str>);

impl Incoming<'_> {
    /// The path for logs: no query string, which may carry ids people would rather not log.
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A request on its way upstream: its pool, URL, headers and body.
struct Outgoing<'a> {
    member: &'a Member,
    url: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

/// What the request log line says about how a request ended.
struct Done {
    status: u16,
    attempts: usize,
    key: Option<Arc<KeyEntry>>,
    /// Set when the response did not end cleanly (stream broke off, client left).
    note: Option<String>,
    /// When the answer's first byte went out, from the start of the request.
    first_byte: Option<Duration>,
}

impl Done {
    fn local(status: u16) -> Done {
        Done {
            status,
            attempts: 0,
            key: None,
            note: None,
            first_byte: None,
        }
    }
}

/// One upstream attempt's result.
enum Attempt {
    /// The answer goes to the client; the budget is what it said is left of the key's.
    Deliver(Delivery, Option<Budget>),
    Retry {
        outcome: Outcome,
        why: String,
    },
}

/// An upstream response on its way to the client.
enum Delivery {
    /// Body in hand (small fixed-length bodies, and inspected error bodies).
    Whole {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Body of unknown or large length, relayed as it arrives, after the bytes already
    /// read to look at its first event.
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        /// The upstream's `Content-Length`, kept so a body that breaks off falls short of it.
        length: Option<u64>,
        held: Vec<u8>,
        body: BodyReader<'static>,
        sse: bool,
    },
    /// HEAD, 204, 304.
    HeadOnly {
        status: u16,
        headers: Vec<(String, String)>,
    },
}

impl Proxy {
    fn handle(&self, head: &Head, conn: &mut Conn) {
        let started = Instant::now();
        let in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let _counted = InFlight(&self.in_flight);
        // An allowed page reads every answer, the busy ones too.
        let caller = browser::caller(
            head.header("origin"),
            head.header("sec-fetch-site"),
            &self.config.allow_origins,
        );
        let cors = browser::cors_headers(caller);
        let named = self.named_pool(&head.target);
        let shape = self.shape_in(&head.target, named.as_ref());
        if self.stopping.load(Ordering::SeqCst) {
            let reply = Reply::busy("roo-proxy is shutting down; send the request again");
            let _ = stream::write_reply_in(conn, &reply, true, &cors, shape);
            conn.close_after();
            return;
        }
        if in_flight > self.config.max_requests {
            let reply = Reply::busy(format!(
                "too many requests at once (--max-requests {}); send it again in a moment",
                self.config.max_requests
            ));
            let _ = stream::write_reply_in(conn, &reply, false, &cors, shape);
            self.metrics
                .request(503, 0, started.elapsed(), None, SystemTime::now());
            return;
        }
        let incoming = Incoming {
            method: &head.method,
            target: &head.target,
            started,
            cors: &cors,
            shape,
            named,
        };
        let done = match self.prepare(head, conn, &incoming, caller) {
            Ok(Prepared::Preflight(mut headers)) => {
                headers.extend_from_slice(&cors);
                let _ = stream::write_head(conn, 204, &headers, Framing::NoBody);
                Done::local(204)
            }
            Ok(Prepared::Credit(member)) => {
                let body = self.credit(&member);
                let mut headers = vec![
                    ("Content-Type".to_string(), "application/json".to_string()),
                    ("Cache-Control".to_string(), "no-store".to_string()),
                ];
                headers.extend_from_slice(&cors);
                let _ = stream::write_full(conn, 200, &headers, &body);
                Done::local(200)
            }
            Ok(Prepared::Local(route)) => {
                let (status, content_type, body) = self.answer_local(route, &incoming);
                let mut headers = vec![
                    ("Content-Type".to_string(), content_type.to_string()),
                    ("Cache-Control".to_string(), "no-store".to_string()),
                ];
                headers.extend_from_slice(&cors);
                let _ = stream::write_full(conn, status, &headers, &body);
                // The status page polls every two seconds: keep those out of the log.
                debug!("{} {} → {status}", incoming.method, incoming.path());
                return;
            }
            Ok(Prepared::Forward {
                member,
                url,
                headers,
                body,
                claim: _held,
            }) => {
                let out = Outgoing {
                    member: &member,
                    url: &url,
                    headers: &headers,
                    body: &body,
                };
                self.forward(conn, head.http10, &incoming, out)
            }
            Err(reply) => {
                let _ = stream::write_reply_in(conn, &reply, false, &cors, shape);
                if reply.status >= 500 || reply.status == 429 {
                    debug!("{}", reply.message);
                }
                Done::local(reply.status)
            }
        };
        let key = done
            .key
            .map_or_else(|| "-".to_string(), |entry| entry.name());
        let took = started.elapsed();
        let first_byte = done.first_byte;
        self.metrics.request(
            done.status,
            done.attempts,
            took,
            first_byte,
            SystemTime::now(),
        );
        let note = done.note.map(|n| format!(" ({n})")).unwrap_or_default();
        info!(
            "{} {} → {} in {} ms, {} attempt{}, key {key}{note}",
            incoming.method,
            incoming.path(),
            done.status,
            started.elapsed().as_millis(),
            done.attempts,
            if done.attempts == 1 { "" } else { "s" },
        );
    }

    /// Everything that can be decided before the first upstream attempt.
    fn prepare<'h>(
        &self,
        head: &'h Head,
        conn: &mut Conn,
        incoming: &Incoming,
        caller: Caller,
    ) -> Result<Prepared<'h>, Reply> {
        // Before anything else: a page of another origin, or a name that reached us by a
        // DNS trick, gets nothing, and no key is touched.
        browser::check_host(
            head.header("host"),
            browser::Hosts {
                listening: &self.config.host,
                extra: &self.config.allow_hosts,
                any: self.config.access_token.is_some(),
            },
        )?;
        let route = Route::of(incoming.path());
        // A link to the status page is followed (the page holds no data; its requests
        // for data carry their origin).
        let navigation = route == Some(Some(Route::Page)) && head.header("origin").is_none();
        if caller == Caller::Refused && !navigation {
            return Err(browser::refused_origin(head.header("origin")));
        }
        if incoming.method == "OPTIONS" {
            let allowed = matches!(caller, Caller::Allowed(_));
            return Ok(Prepared::Preflight(preflight_headers(head, allowed)));
        }
        if route.is_none() && route::is_browser_noise(incoming.path()) {
            return Err(Reply::new(
                404,
                "not an API path: browser requests such as /favicon.ico are answered here, never forwarded",
            ));
        }
        // The page itself holds no data; everything else needs the token.
        if route != Some(Some(Route::Page)) {
            self.check_access(head)?;
        }
        if let Some(route) = route {
            return match route {
                Some(route) => Ok(Prepared::Local(route)),
                None => Err(Reply::new(
                    404,
                    "no such status path; try /_roo/ (page), /_roo/health, /_roo/status or /_roo/metrics",
                )),
            };
        }
        if incoming.method == "CONNECT" {
            return Err(Reply::new(
                400,
                "CONNECT is not supported: this is not a general proxy; send API requests such as POST /v1/chat/completions",
            ));
        }
        if !route::forwardable_method(incoming.method) {
            return Err(Reply::new(
                501,
                format!(
                    "the method '{}' is not forwarded; API requests use GET, POST, PUT, PATCH, DELETE or HEAD (in capitals)",
                    incoming.method.escape_debug()
                ),
            ));
        }
        // A pool named in the path (`/gemini/v1beta/…`, `/work/v1/chat/completions`)
        // serves the request; the bare base URL is the default pool. A provider's name
        // that is no pool here gets the list of pools.
        let (member, target) = match &incoming.named {
            Some((member, rest)) => (Arc::clone(member), rest.as_ref()),
            None => {
                if let Some((named, _)) = route::pool_prefix(incoming.target)
                    && self.pools.is_pool_name(named)
                {
                    return Err(Reply::new(
                        404,
                        format!(
                            "no pool '{named}' here (no key in the keys file is for it); pools: {}",
                            pools::listing(&self.pools)
                        ),
                    ));
                }
                (self.pools.default_pool(), incoming.target)
            }
        };
        let url = route::upstream_url(&member.upstream, member.provider.base_prefixes(), target)
            .map_err(|e| Reply::new(400, e.to_string()))?;
        // Every Connection header names headers that stop here.
        let named: Vec<String> = head
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| route::connection_tokens(value))
            .collect();
        let headers: Vec<(&str, &str)> = head
            .headers
            .iter()
            .filter(|(name, _)| route::forward_request_header(name, &named))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        // A head the upstream client cannot write is the client's mistake, not a failure
        // of the upstream or a key.
        if !upstream::head_fits(incoming.method, &url, &headers) {
            return Err(Reply::new(
                431,
                format!(
                    "the request's headers are too large to forward (the head sent upstream must fit in {} bytes); send fewer or shorter headers",
                    upstream::OUTPUT_BUFFER
                ),
            ));
        }
        if member.pool.len() == 0 {
            return Err(Reply::new(503, no_keys_hint(&self.config.keys_file)));
        }
        // Roo's credit display asks OpenRouter's `/key`: the pool's credit, not whichever
        // key would come next.
        if member.provider == Provider::OpenRouter
            && incoming.method == "GET"
            && url.split('?').next() == Some(&format!("{}/key", member.upstream))
        {
            return Ok(Prepared::Credit(member));
        }
        let limit = self.config.max_body;
        let mut claim = self.held.claim();
        let body = conn.read_body(limit, &mut |bytes| claim.grow_to(bytes)).map_err(|e| match e {
            BodyError::NoRoom => Reply::busy(format!(
                "the request bodies held now take all of --max-body-memory ({} bytes); send it again in a moment",
                self.config.max_body_memory
            )),
            BodyError::TooLarge => Reply::new(
                413,
                format!("the request body is larger than {limit} bytes (--max-body)"),
            ),
            BodyError::TimedOut => Reply::new(
                408,
                format!(
                    "the request body did not arrive within {} s (--client-timeout)",
                    self.config.client_timeout.as_secs()
                ),
            ),
            BodyError::Broken(why) => {
                Reply::new(400, format!("could not read the request body: {why}"))
            }
        })?;
        Ok(Prepared::Forward {
            member,
            url,
            headers,
            body,
            claim,
        })
    }

    /// Tries keys until one gets an answer worth delivering, or none is left to try; with
    /// `--wait`, waits in line for a key. `attempts.rs` decides each step; this does the
    /// sending, waiting, recording and logging.
    fn forward(&self, to: &mut Conn, http10: bool, incoming: &Incoming, out: Outgoing) -> Done {
        let Outgoing {
            member,
            url,
            headers,
            body,
        } = out;
        let rules = Rules {
            wait: self.config.wait,
            max_attempts: self.config.max_attempts,
            upstream: &member.upstream,
            keys_file: &self.config.keys_file,
        };
        let mut attempts: Attempts<Arc<KeyEntry>> = Attempts::new(&rules, incoming.started);
        let model = route::model_of(incoming.path(), body);
        let model = model.as_deref();
        let (pool, room, shape) = (&member.pool, &member.room, incoming.shape);
        let place = room.arrive();
        let mut in_line = None;
        loop {
            let now = Now::read();
            let seen = room.look(place);
            let full = attempts.made() > 0 || attempts.found_none();
            let view = view(pool, now, seen.ahead, model, full);
            match attempts.next(now.mono, &view) {
                Next::Try => {
                    let Some((ticket, change)) = pool.pick(now, attempts.tried(), model) else {
                        attempts.no_key();
                        continue;
                    };
                    in_line = None;
                    let entry = Arc::clone(ticket.entry());
                    if let Some(change) = change {
                        log_change(&entry, change, now, "its rest is over");
                    }
                    attempts.sent(Arc::clone(&entry), view.pool.ready);
                    let sent = self.attempt(incoming, member, url, headers, &entry, body);
                    match sent {
                        Attempt::Deliver(delivery, budget) => {
                            let now = Now::read();
                            let change = ticket.finish(Outcome::Served { budget }, None, now);
                            room.wake();
                            if let Some(change) = change {
                                log_change(&entry, change, now, "its budget of requests is spent");
                            }
                            let first_byte = Some(incoming.started.elapsed());
                            let (status, note) = deliver(to, http10, delivery, shape);
                            return Done {
                                status,
                                attempts: attempts.made(),
                                key: Some(entry),
                                note,
                                first_byte,
                            };
                        }
                        Attempt::Retry { outcome, why } => {
                            debug!(
                                "attempt {} with key {}: {why}",
                                attempts.made(),
                                entry.name()
                            );
                            let now = Now::read();
                            if matches!(outcome, Outcome::RateLimited { .. }) {
                                self.metrics.rate_limited(now.wall);
                            }
                            let change = ticket.finish(outcome, Some(&why), now);
                            room.wake();
                            if let Some(change) = change {
                                log_change(&entry, change, now, &why);
                            }
                            if outcome == Outcome::Failed {
                                attempts.failed(why);
                            }
                        }
                    }
                }
                Next::Wait(until) => {
                    if in_line.is_none() {
                        // In line from now on; look again with this request counted.
                        in_line = Some(room.join(place));
                        continue;
                    }
                    if let Err(why) = wait(room, to, seen, until) {
                        return Done {
                            status: 499,
                            attempts: attempts.made(),
                            key: attempts.last_key().cloned(),
                            note: Some(why),
                            first_byte: None,
                        };
                    }
                    attempts.waited();
                }
                Next::GiveUp(reply) => {
                    drop(in_line);
                    let first_byte = Some(incoming.started.elapsed());
                    let _ = stream::write_reply_in(to, &reply, false, incoming.cors, shape);
                    return Done {
                        status: reply.status,
                        attempts: attempts.made(),
                        key: attempts.last_key().cloned(),
                        note: None,
                        first_byte,
                    };
                }
            }
        }
    }

    /// Sends one attempt and decides whether its answer goes to the client.
    fn attempt(
        &self,
        incoming: &Incoming,
        member: &Member,
        url: &str,
        headers: &[(&str, &str)],
        entry: &KeyEntry,
        body: &[u8],
    ) -> Attempt {
        let failed = |why: String| Attempt::Retry {
            outcome: Outcome::Failed,
            why,
        };
        let sent = upstream::send(
            self.upstream.agent(),
            incoming.method,
            url,
            headers,
            (&entry.key, member.provider.auth()),
            body,
        );
        let response = match sent {
            Ok(response) => response,
            Err(e) => return failed(key::redact(&upstream::describe(&e), [&entry.key])),
        };
        let status = response.status().as_u16();
        if status < 200 {
            // 101 and other interim answers are no answer to this request.
            return failed(format!("HTTP {status}, which is not a final answer"));
        }
        let (parts, upstream_body) = response.into_parts();
        let budget = classify::budget(&parts.headers, SystemTime::now());
        // An upstream may echo the key it got: masked in every header passed on and every
        // body looked at, before anything is cut short or logged.
        let mut out = response_headers(&parts.headers, &entry.key);
        out.extend_from_slice(incoming.cors);
        let length = parts
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());

        if classify::needs_body(status) || status >= 400 {
            let bytes =
                match stream::read_bounded(&mut upstream_body.into_reader(), MAX_INSPECTED_BODY) {
                    Ok(bytes) => key::redact_bytes(&bytes, [&entry.key]).into_owned(),
                    Err(e) => {
                        return failed(format!("HTTP {status}, and reading its body failed: {e}"));
                    }
                };
            let verdict = classify::classify(
                status,
                &parts.headers,
                &bytes,
                SystemTime::now(),
                self.config.cooldown,
            );
            return match verdict {
                Verdict::Pass => Attempt::Deliver(
                    Delivery::Whole {
                        status,
                        headers: out,
                        body: bytes,
                    },
                    budget,
                ),
                Verdict::Retry(outcome) => {
                    let message = classify::error_message(&bytes)
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    let why = format!("HTTP {status}{message}");
                    Attempt::Retry { outcome, why }
                }
            };
        }
        let no_body = incoming.method == "HEAD" || matches!(status, 204 | 304);
        if no_body {
            if let Some(length) = length.filter(|_| incoming.method == "HEAD") {
                out.push(("Content-Length".into(), length.to_string()));
            }
            return Attempt::Deliver(
                Delivery::HeadOnly {
                    status,
                    headers: out,
                },
                budget,
            );
        }
        if let Some(length) = length.filter(|len| *len <= MAX_BUFFERED_BODY) {
            return match stream::read_bounded(&mut upstream_body.into_reader(), length) {
                Ok(bytes) => Attempt::Deliver(
                    Delivery::Whole {
                        status,
                        headers: out,
                        body: bytes,
                    },
                    budget,
                ),
                Err(e) => failed(format!("HTTP {status}, but the body broke off: {e}")),
            };
        }
        let sse = is_event_stream(&parts.headers);
        let mut reader = upstream_body.into_reader();
        let mut held = Vec::new();
        let mut length = length;
        if sse && status == 200 {
            // An error can hide in the first event of a 200 stream (OpenRouter sends rate
            // limits that way when they strike after the headers). Nothing has gone to the
            // client yet, so look before sending, and retry like a 429 status would.
            let (read, bytes, first) =
                match stream::hold_first_event(&mut reader, MAX_HELD_STREAM_START) {
                    Ok((bytes, first)) => (
                        bytes.len(),
                        key::redact_bytes(&bytes, [&entry.key]).into_owned(),
                        first.map(|data| key::redact_bytes(&data, [&entry.key]).into_owned()),
                    ),
                    Err(e) => {
                        return failed(format!("the stream broke off before its first event: {e}"));
                    }
                };
            let verdict = first.as_deref().and_then(|data| {
                classify::stream_error(
                    data,
                    &parts.headers,
                    SystemTime::now(),
                    self.config.cooldown,
                )
            });
            if let Some(Verdict::Retry(outcome)) = verdict {
                let message = first
                    .as_deref()
                    .and_then(classify::stream_error_message)
                    .unwrap_or_default();
                let why = format!("an error in the stream: {message}");
                return Attempt::Retry { outcome, why };
            }
            // Masking a key in the held start changes its length.
            length = length.map(|n| (n + bytes.len() as u64).saturating_sub(read as u64));
            held = bytes;
        }
        Attempt::Deliver(
            Delivery::Stream {
                status,
                headers: out,
                length,
                held,
                body: reader,
                sse,
            },
            budget,
        )
    }

    /// The pool's credit in OpenRouter's `/key` shape: each key's own answer, asked for
    /// (at most [`credit::MOST_ASKED`] per request) or remembered, summed.
    fn credit(&self, member: &Member) -> Vec<u8> {
        let entries = member.pool.entries();
        let url = format!("{}/key", member.upstream);
        let mut credits = Vec::new();
        let mut asked = 0;
        for entry in entries.iter().filter(|e| !e.disabled) {
            let print = state::fingerprint(&entry.key);
            let known = match self.credits.fresh(&print, Instant::now()) {
                Some(known) => known,
                None if asked < credit::MOST_ASKED => {
                    asked += 1;
                    let credit = self.fetch_credit(&url, entry, member.provider);
                    self.credits.store(print, credit, Instant::now());
                    credit
                }
                None => None,
            };
            credits.extend(known);
        }
        credit::sum(&credits, entries.len())
            .to_string()
            .into_bytes()
    }

    /// One key's own `/key` answer; `None` when it is not a credit (an error, a refusal).
    fn fetch_credit(
        &self,
        url: &str,
        entry: &KeyEntry,
        provider: Provider,
    ) -> Option<credit::Credit> {
        let response = upstream::send(
            self.upstream.agent(),
            "GET",
            url,
            &[],
            (&entry.key, provider.auth()),
            b"",
        )
        .ok()?;
        if response.status() != 200 {
            return None;
        }
        let bytes =
            stream::read_bounded(&mut response.into_body().into_reader(), 64 * 1024).ok()?;
        credit::parse(&bytes)
    }

    /// The error shape of the proxy's own answer to `target`: the provider's of the pool
    /// its path names (`/work/…` too), else as `error::shape_for` says.
    fn shape_for(&self, target: &str) -> Shape {
        self.shape_in(target, self.named_pool(target).as_ref())
    }

    /// The same, for a `target` whose named pool was already looked up.
    fn shape_in(&self, target: &str, named: Option<&Named>) -> Shape {
        match named {
            Some((member, rest)) => error::shape_for(Some(rest), member.provider),
            None => error::shape_for(Some(target), self.config.provider),
        }
    }

    /// The pool `target`'s first segment names, with the rest of the path.
    fn named_pool<'t>(&self, target: &'t str) -> Option<Named<'t>> {
        let (named, rest) = route::pool_prefix(target)?;
        Some((self.pools.find(named)?, rest))
    }

    /// With an access token configured, the request must carry it.
    fn check_access(&self, head: &Head) -> Result<(), Reply> {
        let Some(expected) = &self.config.access_token else {
            return Ok(());
        };
        let given = access::presented(|name| head.header(name), &head.target);
        // Every form is compared, so a client's dummy key in one does not hide the token
        // in another.
        if given.iter().fold(false, |ok, given| {
            ok | access::token_matches(given, expected)
        }) {
            Ok(())
        } else {
            Err(Reply::new(
                401,
                "this proxy needs its access token: put it where your client asks for an API key (Authorization: Bearer …, x-api-key, x-goog-api-key, api-key or ?key=)",
            ))
        }
    }

    /// The link to the other instances, with `--redis`.
    fn team_report(&self) -> Option<TeamReport> {
        #[cfg(feature = "redis")]
        return self.team.as_ref().map(|t| t.report(&*self.pools));
        #[cfg(not(feature = "redis"))]
        None
    }

    /// Every pool's keys in one report (the default pool's pause), and each pool at a
    /// glance.
    fn report(&self, now: Now) -> (PoolReport, Vec<PoolAbout>) {
        let mut whole = PoolReport {
            keys: Vec::new(),
            outlook: Outlook::default(),
            paused_seconds: None,
        };
        let mut pools = Vec::new();
        for (i, member) in self.pools.all().iter().enumerate() {
            let report = member.pool.report(now);
            let (o, all) = (&report.outlook, &mut whole.outlook);
            all.total += o.total;
            all.ready += o.ready;
            all.invalid += o.invalid;
            all.disabled += o.disabled;
            all.booked += o.booked;
            all.next_free = match (all.next_free, o.next_free) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if i == 0 {
                whole.paused_seconds = report.paused_seconds;
            }
            pools.push(PoolAbout {
                name: member.name.clone(),
                provider: member.provider,
                upstream: member.upstream.clone(),
                keys_available: o.ready,
                keys_total: o.total,
                paused_seconds: report.paused_seconds,
                waiting: member.room.waiting(),
            });
            whole.keys.extend(report.keys);
        }
        (whole, pools)
    }

    /// The proxy's own status paths: (status, content type, body).
    fn answer_local(&self, route: Route, incoming: &Incoming) -> (u16, &'static str, Vec<u8>) {
        if incoming.method != "GET" && incoming.method != "HEAD" {
            let reply = Reply::new(405, "the status paths answer GET only");
            return (405, "application/json", reply.body_in(incoming.shape));
        }
        let (report, pools) = self.report(Now::read());
        let about = About {
            provider: self.config.provider.name(),
            upstream: &self.config.upstream,
            strategy: self.config.strategy,
            uptime: self.started.elapsed(),
            waiting: pools.iter().map(|p| p.waiting).sum(),
            team: self.team_report(),
            pools,
            default: self.config.provider,
        };
        let json = "application/json";
        match route {
            Route::Health => {
                let (code, body) = status::health(&report, &about);
                (code, json, body.to_string().into_bytes())
            }
            Route::Status => {
                let body = status::status(&report, &self.metrics.snapshot(), &about);
                (200, json, body.to_string().into_bytes())
            }
            Route::Metrics => {
                let text = status::prometheus(&report, &self.metrics.snapshot(), &about);
                (
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.into_bytes(),
                )
            }
            Route::Page => (
                200,
                "text/html; charset=utf-8",
                status::PAGE.as_bytes().to_vec(),
            ),
        }
    }
}

fn log_change(entry: &KeyEntry, change: Change, now: Now, why: &str) {
    let name = entry.name();
    let secs = |until: Instant| {
        until
            .saturating_duration_since(now.mono)
            .as_secs_f64()
            .ceil()
    };
    match change {
        Change::Back => warn!("key {name} is back in rotation: {why}"),
        Change::Resting {
            until,
            others,
            paused,
            scope,
        } => {
            let account = match (&entry.account, others) {
                (Some(account), 1..) => {
                    format!(" with {others} more key(s) of account '{account}'")
                }
                _ => String::new(),
            };
            let only = match scope {
                Scope::Key => "",
                Scope::Model => " for this model only",
                Scope::FreeModels => " for free models only",
            };
            warn!(
                "key {name} rests for {} s{only}{account}: {why}",
                secs(until)
            );
            if let Some(pause) = paused {
                warn!(
                    "every key got a 429 within seconds (a limit on the whole account, IP or upstream): no requests for {} s",
                    secs(pause)
                );
            }
        }
        Change::Disabled => warn!("key {name} is taken out of rotation: {why}"),
    }
}

enum Prepared<'a> {
    Preflight(Vec<(String, String)>),
    /// `GET /key` on OpenRouter: the pool's credit.
    Credit(Arc<Member>),
    /// One of the proxy's own status paths.
    Local(Route),
    Forward {
        /// The pool that serves the request.
        member: Arc<Member>,
        url: String,
        /// The client's headers that go upstream, borrowed from its request head.
        headers: Vec<(&'a str, &'a str)>,
        body: Vec<u8>,
        /// The body's share of `--max-body-memory`, held until the answer is delivered.
        claim: Claim,
    },
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes an upstream response to the client; returns the status and, when the body did
/// not end cleanly, why.
/// A broken event stream ends with an error event in `shape`.
fn deliver(to: &mut Conn, http10: bool, delivery: Delivery, shape: Shape) -> (u16, Option<String>) {
    let gone = |e: std::io::Error| Some(format!("client went away: {e}"));
    match delivery {
        Delivery::Whole {
            status,
            headers,
            body,
        } => (
            status,
            stream::write_full(to, status, &headers, &body)
                .err()
                .and_then(gone),
        ),
        Delivery::HeadOnly { status, headers } => (
            status,
            stream::write_head(to, status, &headers, Framing::NoBody)
                .err()
                .and_then(gone),
        ),
        Delivery::Stream {
            status,
            headers,
            length,
            held,
            mut body,
            sse,
        } => {
            let framing = length.map_or(Framing::streaming(http10), Framing::Length);
            let (end, bytes) = match stream::write_stream(
                to,
                status,
                &headers,
                framing,
                held,
                &mut body,
                sse.then_some(shape),
            ) {
                Ok(relayed) => relayed,
                Err(e) => return (status, gone(e)),
            };
            let note = match end {
                End::Complete => None,
                End::UpstreamFailed(e) => {
                    // An event stream was ended with an error event. Any other body is
                    // short of its length or has no terminating chunk: closing the
                    // connection tells the client it is incomplete.
                    if !sse {
                        to.close_after();
                    }
                    Some(format!("upstream broke off after {bytes} bytes: {e}"))
                }
                End::ClientGone(e) => gone(e),
            };
            (status, note)
        }
    }
}

/// How often a waiting request checks that its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(100);

/// The pool as a request for `model` sees it. Unless `full`, counting ready keys stops
/// at the most one round may try, and the rest is read only when none is ready: cheap
/// with 10,000 keys for a first attempt. That count is for any model, so after an
/// attempt, or when the pool found no key for this model, the view is `full`.
fn view(pool: &Pool, now: Now, ahead: usize, model: Option<&str>, full: bool) -> View {
    let ready = if full {
        0
    } else {
        pool.ready_up_to(now, MAX_DEFAULT_ATTEMPTS)
    };
    let pool = if ready > 0 {
        Outlook {
            total: ready,
            ready,
            ..Outlook::default()
        }
    } else {
        pool.outlook(now, model)
    };
    View { pool, ahead }
}

/// Waits in line in `room` until `until` (at most [`attempts::RECHECK`]) or until the
/// room or the pool changes, watching the client's socket; `Err` says the client hung up.
fn wait(room: &Room, conn: &Conn, seen: Seen, until: Instant) -> Result<(), String> {
    let until = until.min(Instant::now() + attempts::RECHECK);
    loop {
        if conn.client_gone() {
            return Err("client left while waiting for a key".to_string());
        }
        let now = Instant::now();
        if now >= until || room.sleep(seen, until.min(now + CLIENT_CHECK)) {
            return Ok(());
        }
    }
}

/// The upstream's end-to-end response headers, with `key` masked in their values.
fn response_headers(headers: &HeaderMap, key: &key::ApiKey) -> Vec<(String, String)> {
    let named = headers
        .get_all("connection")
        .iter()
        .flat_map(|v| route::connection_tokens(&String::from_utf8_lossy(v.as_bytes())))
        .collect::<Vec<_>>();
    headers
        .iter()
        .filter(|(name, _)| route::forward_response_header(name.as_str(), &named))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                key::redact(&String::from_utf8_lossy(value.as_bytes()), [key]),
            )
        })
        .collect()
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
        && !headers.contains_key("content-encoding")
}

/// The answer to a CORS preflight from an allowed origin (or from no browser at all): any
/// method and header. Chrome's Private Network Access opt-in only for an allowed origin.
fn preflight_headers(head: &Head, allowed: bool) -> Vec<(String, String)> {
    let asked = |name: &str| head.header(name).map(str::to_string);
    let mut headers = vec![
        (
            "Access-Control-Allow-Methods".to_string(),
            "GET, POST, PUT, PATCH, DELETE, OPTIONS".to_string(),
        ),
        (
            "Access-Control-Allow-Headers".to_string(),
            asked("Access-Control-Request-Headers").unwrap_or_else(|| "*".into()),
        ),
        ("Access-Control-Max-Age".to_string(), "86400".to_string()),
    ];
    if allowed && asked("Access-Control-Request-Private-Network").is_some() {
        headers.push((
            "Access-Control-Allow-Private-Network".to_string(),
            "true".to_string(),
        ));
    }
    headers
}

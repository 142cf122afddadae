//! The subcommands: `roo-proxy keys …` (add, remove, list, check, disable, enable keys)
//! and `roo-proxy status` (the pool of a running proxy).
//!
//! Invariants: keys are printed masked, and so is nothing a user typed that could be a
//! key (a remove prefix is never echoed). Every change goes through `store::edit`
//! (locked, atomic, malformed files untouched). Each command first prints the absolute
//! path of the keys file it used.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::front::cli::{
    AddArgs, CheckArgs, KeysAction, ListArgs, RemoveArgs, StatusArgs, SwitchArgs,
};
use crate::front::config;
use crate::front::console::{errln, outln, plain};
use crate::keys::key::{self, ApiKey};
use crate::keys::secret::{self, Origin};
use crate::keys::store::{self, Edit, KeyEntry};
use crate::persist::state::{self, KeyStatus, ScopedRest};
use crate::rotation::pool::epoch_ms;
use crate::rotation::pools;
use crate::rotation::provider::{self, Check, Provider};
use crate::serve::error::Error;

/// Shortest remove prefix: fewer characters would match most keys (`sk-or-v1` alone
/// is 8 and still needs `--all` when it matches several).
const MIN_PREFIX: usize = 8;

/// Runs a `keys` command; the exit status is 0, or 1 when `check` found a bad key.
/// `top_keys_file` is a `--keys-file` given before `keys`, used when the command has none;
/// `top_provider` a `--provider` given there, the default pool's provider.
pub fn run(
    action: KeysAction,
    top_keys_file: Option<PathBuf>,
    top_provider: Option<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<u8, Error> {
    let default_provider = || default_provider(top_provider.clone(), &env);
    let file = |own: Option<PathBuf>| config::keys_file(own.or(top_keys_file.clone()), &env);
    match action {
        KeysAction::Add(args) => add(file(args.keys_file.clone()), args, default_provider()?),
        KeysAction::Remove(args) => remove(file(args.keys_file.clone()), args),
        KeysAction::List(args) => list(file(args.keys_file.clone()), args, default_provider()?),
        KeysAction::Check(args) => check(file(args.keys_file.clone()), args, &env),
        KeysAction::Disable(args) => set_enabled(file(args.keys_file.clone()), args.into(), false),
        KeysAction::Enable(args) => set_enabled(file(args.keys_file.clone()), args.into(), true),
        KeysAction::Encrypt(args) => encrypt(file(args.keys_file)),
        KeysAction::Decrypt(args) => decrypt(file(args.keys_file)),
    }
}

/// The default pool's provider as a proxy started the same way would have it: a
/// `--provider` before `keys`, else `ROO_PROXY_PROVIDER`, else OpenRouter.
fn default_provider(
    flag: Option<String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Provider, Error> {
    // The base URL is not needed here; a placeholder keeps `custom` from asking for one.
    Ok(config::upstream(flag, Some(String::from("https://x.invalid")), env)?.0)
}

fn add(path: PathBuf, args: AddArgs, default: Provider) -> Result<u8, Error> {
    outln!("keys file: {}", path.display());
    let provider = match args.provider.as_deref() {
        None => None,
        Some(name) => Some(Provider::parse(name).ok_or_else(|| {
            Error::Refused(format!(
                "not adding the key: --provider '{}' is not a provider; use one of {}",
                name.escape_debug(),
                crate::rotation::provider::names()
            ))
        })?),
    };
    let pool = match args.pool.as_deref() {
        None => None,
        Some(name) => Some(
            store::check_pool_name(name)
                .map_err(|why| Error::Refused(format!("not adding the key: --pool {why}")))?,
        ),
    };
    let raw = match args.key.as_deref() {
        None | Some("-") => read_key_from_stdin()?,
        Some(raw) => raw.to_string(),
    };
    let key = ApiKey::parse(raw.trim())
        .map_err(|problem| Error::Refused(format!("not adding the key: {problem}")))?;
    let tidy = |text: Option<String>, what: &str| {
        let text = text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if text
            .as_deref()
            .is_some_and(|t| t.chars().any(char::is_control))
        {
            return Err(Error::Refused(format!(
                "the {what} has a control character"
            )));
        }
        Ok(text)
    };
    let label = tidy(args.label, "label")?;
    let account = tidy(args.account, "account")?;
    let new = KeyEntry {
        provider,
        pool: pool.clone(),
        ..KeyEntry::bare(key.clone())
    };
    let (pool_name, goes_to) = pools::home_of(&new, default);
    if let Some(shaped) = provider::by_key_shape(key.expose())
        .filter(|shaped| !shaped.contains(&goes_to) && goes_to != Provider::Custom)
    {
        errln!(
            "warning: the key looks like one for {}, but it goes to the pool '{pool_name}' for {goes_to}; if that is wrong, remove it and add it again with --provider {}",
            shaped[0],
            shaped[0]
        );
    }
    // A pool of `--provider`'s goes to `--upstream`; another custom pool needs its own.
    if goes_to == Provider::Custom && default != Provider::Custom {
        errln!(
            "note: the pool '{pool_name}' is for custom, which has no base URL of its own: start the proxy with --pool-upstream {pool_name}=https://…/v1, or it will not load this keys file"
        );
    }

    store::create_folder(&path)?;
    let added = store::edit(&path, |entries| {
        let existing: Vec<KeyEntry> = entries.iter().filter_map(store::entry_of).collect();
        if existing.iter().any(|e| e.key == key) {
            return Ok::<_, Error>(Edit::Keep(None));
        }
        pools::check_homes(existing.iter().chain([&new]), default)
            .map_err(|why| Error::Refused(format!("not adding the key: {why}")))?;
        let mut entry = Map::new();
        entry.insert("key".into(), Value::String(key.expose().to_string()));
        if let Some(provider) = provider {
            entry.insert("provider".into(), Value::String(provider.name().into()));
        }
        if let Some(pool) = &pool {
            entry.insert("pool".into(), Value::String(pool.clone()));
        }
        if let Some(label) = &label {
            entry.insert("label".into(), Value::String(label.clone()));
        }
        if let Some(account) = &account {
            entry.insert("account".into(), Value::String(account.clone()));
        }
        entries.push(Value::Object(entry));
        Ok(Edit::Write(Some(entries.len())))
    })?;
    let name = KeyEntry {
        label,
        account,
        ..KeyEntry::bare(key)
    }
    .name();
    match added {
        Some(total) if pool_name != default.name() => outln!(
            "added {name} to the pool '{pool_name}' ({goes_to}; clients reach it at the proxy's base URL + /{pool_name}); {total} key{} in the file",
            plural(total)
        ),
        Some(total) => outln!("added {name}; {total} key{} in the file", plural(total)),
        None => outln!("{name} is already in the file; nothing changed"),
    }
    warn_about_exposure(&path);
    Ok(0)
}

/// `keys encrypt`: picks the secret (see `secret::choose`), stores it in the keychain
/// first (a generated one must be there before the file needs it), then seals the file.
fn encrypt(path: PathBuf) -> Result<u8, Error> {
    outln!("keys file: {}", path.display());
    if crate::keys::store::read_bounded(&path)
        .is_ok_and(|bytes| crate::keys::sealed::is_sealed(&bytes))
    {
        outln!("it is already encrypted; nothing changed");
        return Ok(0);
    }
    // A file that does not parse is refused before a passphrase is asked for.
    drop(store::load(&path)?);
    store::create_folder(&path)?;
    let chosen = secret::choose().map_err(Error::Refused)?;
    let seal = store::Seal::new(&chosen.secret, chosen.work)
        .map_err(|e| Error::Refused(format!("cannot encrypt: {e}")))?;
    let mut kept = None;
    let done = store::reseal(&path, Some(&seal), |_| {
        if chosen.from == Origin::Variable {
            return Ok(());
        }
        kept = Some(secret::remember(&path, &chosen.secret));
        match &kept {
            Some(Err(e)) if chosen.from == Origin::Generated => Err(Error::Refused(format!(
                "cannot store the secret in {}: {e}; nothing changed (set {} to use a passphrase instead)",
                secret::keychain_name(),
                secret::PASSPHRASE_VARIABLE
            ))),
            _ => Ok(()),
        }
    })?;
    let n = match done {
        store::Resealed::Already => {
            outln!("it is already encrypted; nothing changed");
            return Ok(0);
        }
        store::Resealed::Done(n) => n,
    };
    outln!(
        "encrypted {n} key{} (age format, passphrase recipient)",
        plural(n)
    );
    match kept {
        None => outln!(
            "it opens with {} (not copied into {})",
            secret::PASSPHRASE_VARIABLE,
            secret::keychain_name()
        ),
        Some(Ok(())) if chosen.from == Origin::Generated => outln!(
            "its secret was generated and stored in {}; nothing to type, ever",
            secret::keychain_name()
        ),
        Some(Ok(())) if secret::keychain_persists() => outln!(
            "the passphrase is stored in {}, so nothing asks for it",
            secret::keychain_name()
        ),
        Some(Ok(())) => outln!(
            "the passphrase is kept in {} until reboot; after that, set {} or type it when asked",
            secret::keychain_name(),
            secret::PASSPHRASE_VARIABLE
        ),
        Some(Err(e)) => errln!(
            "warning: cannot keep the passphrase in {}: {e}; set {} or type it when asked",
            secret::keychain_name(),
            secret::PASSPHRASE_VARIABLE
        ),
    }
    Ok(0)
}

/// `keys decrypt`: back to plain JSON; the keychain entry is no longer needed.
fn decrypt(path: PathBuf) -> Result<u8, Error> {
    outln!("keys file: {}", path.display());
    match store::reseal(&path, None, |_| Ok::<_, Error>(()))? {
        store::Resealed::Already => outln!("it is not encrypted; nothing changed"),
        store::Resealed::Done(n) => {
            outln!(
                "decrypted {n} key{}; the file is plain JSON again",
                plural(n)
            );
            if let Err(e) = secret::forget(&path) {
                errln!(
                    "warning: cannot remove its secret from {}: {e}",
                    secret::keychain_name()
                );
            }
            warn_about_exposure(&path);
        }
    }
    Ok(0)
}

/// Reads one key from standard input: hidden when typed at a terminal, else the whole
/// input (so `echo $KEY | roo-proxy keys add` and `< key.txt` work).
fn read_key_from_stdin() -> Result<String, Error> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("Paste the key (input is hidden) and press Enter: ")
            .map_err(|e| Error::Refused(format!("cannot read the key from the terminal: {e}")));
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Error::Refused(format!("cannot read the key from standard input: {e}")))?;
    Ok(text)
}

fn remove(path: PathBuf, args: RemoveArgs) -> Result<u8, Error> {
    outln!("keys file: {}", path.display());
    let (found, left) = store::edit(&path, |entries| {
        let chosen = select(entries, &args.prefix, args.all, "remove")?;
        let found: Vec<KeyEntry> = chosen
            .iter()
            .filter_map(|&i| store::entry_of(&entries[i]))
            .collect();
        let mut i = 0;
        entries.retain(|_| {
            i += 1;
            !chosen.contains(&(i - 1))
        });
        Ok::<_, Error>(Edit::Write((found, entries.len())))
    })?;
    for entry in found {
        outln!("removed {}", entry.name());
    }
    outln!("{left} key{} left in the file", plural(left));
    Ok(0)
}

/// `keys disable` / `keys enable`: marks the matching entries; a running proxy picks the
/// change up. Enabling also clears a rest or an invalid mark, in the running proxy (a new
/// `enabled_at`) and in the state file (for the next start).
fn set_enabled(path: PathBuf, args: SwitchArgs, enable: bool) -> Result<u8, Error> {
    outln!("keys file: {}", path.display());
    let verb = if enable { "enable" } else { "disable" };
    let changed = store::edit(&path, |entries| {
        let chosen = select(entries, &args.prefix, args.all, verb)?;
        let stamp = epoch_ms(SystemTime::now());
        for &i in &chosen {
            if let Value::Object(entry) = &mut entries[i] {
                if enable {
                    entry.remove("disabled");
                    entry.insert("enabled_at".into(), Value::from(stamp));
                } else {
                    entry.insert("disabled".into(), Value::Bool(true));
                }
            }
        }
        let changed: Vec<KeyEntry> = chosen
            .iter()
            .filter_map(|&i| store::entry_of(&entries[i]))
            .collect();
        Ok::<_, Error>(Edit::Write(changed))
    })?;
    if enable {
        let state_file = state::path_for(&path);
        let (mut remembered, _) = state::load(&state_file);
        let before = remembered.keys.len();
        for entry in &changed {
            remembered.keys.remove(&state::fingerprint(&entry.key));
        }
        if remembered.keys.len() != before {
            state::save(&state_file, &remembered).map_err(|source| {
                Error::Keys(store::StoreError::Write {
                    path: state_file,
                    source,
                })
            })?;
        }
    }
    for entry in changed {
        outln!("{verb}d {}", entry.name());
    }
    Ok(0)
}

/// The entries `wanted` names: keys that start with it (at least [`MIN_PREFIX`]
/// characters) or whose label equals it. Matching nothing is an error, and so is matching
/// several without `all`. `wanted` is never echoed: it may be most of a key.
fn select(entries: &[Value], wanted: &str, all: bool, verb: &str) -> Result<Vec<usize>, Error> {
    let wanted = wanted.trim();
    let chosen: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, value)| {
            store::entry_of(value).is_some_and(|e| {
                e.label.as_deref() == Some(wanted)
                    || (wanted.len() >= MIN_PREFIX && e.key.expose().starts_with(wanted))
            })
        })
        .map(|(i, _)| i)
        .collect();
    if chosen.is_empty() {
        return Err(Error::Refused(if wanted.len() < MIN_PREFIX {
            format!(
                "no label matches, and a key prefix needs at least {MIN_PREFIX} characters (a shorter one would match most keys)"
            )
        } else {
            "no key starts with that prefix and no label equals it".to_string()
        }));
    }
    if chosen.len() > 1 && !all {
        let names: Vec<String> = chosen
            .iter()
            .filter_map(|&i| store::entry_of(&entries[i]))
            .map(|e| e.name())
            .collect();
        return Err(Error::Refused(format!(
            "{} keys match ({}); add --all to {verb} them all, or give a longer prefix",
            chosen.len(),
            names.join(", ")
        )));
    }
    Ok(chosen)
}

fn list(path: PathBuf, args: ListArgs, default: Provider) -> Result<u8, Error> {
    let file = store::load(&path)?;
    let (remembered, problem) = state::load(&state::path_for(&path));
    let now = SystemTime::now();
    let rows: Vec<Row> = file
        .entries
        .iter()
        .map(|entry| {
            let saved = remembered.keys.get(&state::fingerprint(&entry.key));
            let left = saved
                .and_then(|s| s.until_ms)
                .map(|until| state::rest_seconds(until, epoch_ms(now)))
                .filter(|left| *left > 0);
            let state = KeyStatus::of_saved(saved, left, entry.disabled);
            let model_rests = saved
                .filter(|_| state != KeyStatus::Disabled)
                .map(|s| s.model_rests.as_slice())
                .unwrap_or_default()
                .iter()
                .filter(|r| r.until_ms > epoch_ms(now))
                .map(|r| ScopedRest {
                    scope: ScopedRest::scope_of(&r.models),
                    seconds_left: state::rest_seconds(r.until_ms, epoch_ms(now)),
                })
                .collect();
            Row {
                entry,
                state,
                left: if state.rests() { left } else { None },
                model_rests,
                last_used_ms: saved.and_then(|s| s.last_used_ms),
            }
        })
        .collect();

    if args.json {
        let keys: Vec<Value> = rows
            .iter()
            .map(|row| {
                let (pool, provider) = pools::home_of(row.entry, default);
                json!({
                    "key": row.entry.key.masked(),
                    "pool": pool,
                    "provider": provider.name(),
                    "label": row.entry.label,
                    "account": row.entry.account,
                    "state": row.state,
                    "seconds_left": row.left,
                    "model_rests": row.model_rests,
                    "last_used_ms": row.last_used_ms,
                })
            })
            .collect();
        let out = json!({"keys_file": path.display().to_string(), "keys": keys});
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(0);
    }

    outln!("keys file: {}", path.display());
    for warning in file.warnings.iter().chain(problem.iter()) {
        errln!("warning: {warning}");
    }
    if rows.is_empty() {
        let hint = if file.source == store::Source::File {
            "it has no keys"
        } else {
            "it does not exist"
        };
        outln!("{hint}; add one with: roo-proxy keys add");
        return Ok(0);
    }
    let state_text = |r: &Row| {
        let state = match r.left {
            Some(left) => format!("{} {}", r.state, state::rest_text(left)),
            None => r.state.to_string(),
        };
        with_model_rests(state, &r.model_rests)
    };
    // A pool column once a key is outside the default pool.
    let pooled = rows
        .iter()
        .any(|r| pools::home_of(r.entry, default).0 != default.name());
    let mut head = vec!["KEY", "LABEL", "ACCOUNT", "STATE", "LAST USED"];
    if pooled {
        head.insert(0, "POOL");
    }
    let mut table = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for row in &rows {
        let (pool, provider) = pools::home_of(row.entry, default);
        let pool = if pool == provider.name() {
            pool
        } else {
            format!("{pool} ({provider})")
        };
        table.push(vec![
            pool,
            row.entry.key.masked(),
            row.entry.label.clone().unwrap_or_else(|| "-".into()),
            row.entry.account.clone().unwrap_or_else(|| "-".into()),
            state_text(row),
            used_ago(row.last_used_ms, now),
        ]);
        if let (false, Some(cells)) = (pooled, table.last_mut()) {
            cells.remove(0);
        }
    }
    print_table(&table);
    outln!("{LIST_LAG}");
    Ok(0)
}

/// What `keys list` shows, and when to ask the proxy instead. It reads the files only:
/// it works with no proxy, and never shows the pool of a proxy that serves another keys
/// file; the lag is one save, while rests last from seconds to a day.
const LIST_LAG: &str = "states as the proxy last saved them, up to a second behind a running one; `roo-proxy status` asks it live";

/// `12s ago`, or `never`.
fn used_ago(last_used_ms: Option<u64>, now: SystemTime) -> String {
    match last_used_ms {
        Some(ms) => format!(
            "{} ago",
            short_duration(Duration::from_millis(epoch_ms(now).saturating_sub(ms)))
        ),
        None => "never".to_string(),
    }
}

/// Prints rows as columns, each as wide as its widest cell; the last column is not padded.
fn print_table(rows: &[Vec<String>]) {
    // Measured as printed: ASCII mode writes `…` as three characters.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| plain(cell).into_owned()).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:width$}  ", width = widths[c]));
            }
        }
        outln!("{}", line.trim_end());
    }
}

/// `roo-proxy status`: the pool of a running proxy, from its `/_roo/status`.
pub fn status(
    args: StatusArgs,
    top: &crate::front::cli::Args,
    env: impl Fn(&str) -> Option<String>,
) -> Result<u8, Error> {
    let host = args
        .host
        .or_else(|| top.host.clone())
        .or_else(|| env("ROO_PROXY_HOST").filter(|h| !h.trim().is_empty()))
        .unwrap_or_else(|| config::DEFAULT_HOST.to_string());
    let port = match args.port.or(top.port) {
        Some(port) => port,
        None => match env("ROO_PROXY_PORT").filter(|p| !p.trim().is_empty()) {
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| Error::Config(format!("ROO_PROXY_PORT='{p}' is not a port number")))?,
            None => config::DEFAULT_PORT,
        },
    };
    // A proxy listening on every address is reached on this machine's loopback.
    let host = match host.trim() {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" | "[::]" => "[::1]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    };
    let base = format!("http://{host}:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let not_running = |why: String| {
        Error::Refused(format!(
            "no roo-proxy answers at {base} ({why}); start one with `roo-proxy`, or give the address with --host and --port"
        ))
    };
    let token = args
        .access_token
        .or_else(|| top.access_token.clone())
        .or_else(|| env("ROO_PROXY_ACCESS_TOKEN"))
        .filter(|t| !t.trim().is_empty());
    let mut request = agent.get(&format!("{base}/_roo/status"));
    if let Some(token) = &token {
        request = request.header("Authorization", &format!("Bearer {}", token.trim()));
    }
    let mut response = request
        .call()
        .map_err(|e| not_running(crate::outbound::upstream::describe(&e)))?;
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if response.status() == 401 {
        return Err(Error::Refused(format!(
            "the proxy at {base} needs its access token: give it with --access-token or ROO_PROXY_ACCESS_TOKEN"
        )));
    }
    let status: Value = match serde_json::from_str(&body) {
        Ok(v) if response.status() == 200 => v,
        _ => {
            return Err(not_running(format!(
                "it answered HTTP {} without a roo-proxy status",
                response.status()
            )));
        }
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
        return Ok(0);
    }
    let field = |v: &Value, name: &str| match &v[name] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    outln!(
        "roo-proxy {} at {base} → {} {} · {} · up {}",
        field(&status, "version"),
        field(&status, "provider"),
        field(&status, "upstream"),
        field(&status, "strategy"),
        short_duration(Duration::from_secs(
            status["uptime_seconds"].as_u64().unwrap_or(0)
        ))
    );
    let paused = match status["paused_seconds"].as_u64() {
        Some(secs) => format!(
            " · paused {} after 429s on every key",
            state::rest_text(secs)
        ),
        None => String::new(),
    };
    outln!(
        "{} of {} keys ready · {} requests · {} retries{paused}",
        field(&status, "keys_available"),
        field(&status, "keys_total"),
        field(&status, "requests"),
        field(&status, "retries"),
    );
    let pools = status["pools"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let several = pools.len() > 1;
    if several {
        for p in pools {
            outln!(
                "pool {} ({}) at {base}/{}/ → {} · {} of {} keys ready",
                field(p, "name"),
                field(p, "provider"),
                field(p, "name"),
                field(p, "upstream"),
                field(p, "keys_available"),
                field(p, "keys_total"),
            );
        }
    }
    let now = SystemTime::now();
    let mut table = vec![
        [
            "KEY",
            "LABEL",
            "ACCOUNT",
            "STATE",
            "BACK IN",
            "REQUESTS",
            "SERVED",
            "429S",
            "FAILURES",
            "LAST USED",
            "LAST ERROR",
        ]
        .map(String::from)
        .to_vec(),
    ];
    if several {
        table[0].insert(0, "POOL".into());
    }
    for k in status["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let mut row = vec![
            field(k, "key"),
            field(k, "label"),
            field(k, "account"),
            with_model_rests(field(k, "state"), &model_rests_of(k)),
            k["seconds_left"]
                .as_u64()
                .map_or("-".into(), state::rest_text),
            field(k, "requests"),
            field(k, "served"),
            field(k, "rate_limited"),
            field(k, "failures"),
            used_ago(k["last_used_ms"].as_u64(), now),
            field(k, "last_error"),
        ];
        if several {
            row.insert(0, field(k, "pool"));
        }
        table.push(row);
    }
    print_table(&table);
    print_instances(&status["shared"], now);
    Ok(0)
}

/// With `--redis`: the link, and the instances sharing the pool.
fn print_instances(shared: &Value, now: SystemTime) {
    if shared.is_null() {
        return;
    }
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let me = text(&shared["instance"]);
    let instances = shared["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let error = match shared["error"].as_str() {
        Some(why) => format!(" ({why}); serving on this instance's own key states"),
        None => String::new(),
    };
    println!(
        "\nkey states shared through redis {}: {}{error} · {} instance{}",
        text(&shared["redis"]),
        text(&shared["link"]),
        instances.len(),
        if instances.len() == 1 { "" } else { "s" },
    );
    if instances.is_empty() {
        return;
    }
    let mut table = vec![
        [
            "INSTANCE",
            "LISTENS ON",
            "PID",
            "ATTEMPTS",
            "429S",
            "UP SINCE",
            "HEARTBEAT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in instances {
        let id = text(&i["id"]);
        table.push(vec![
            if id == me {
                format!("{id} (this one)")
            } else {
                id
            },
            text(&i["listen"]),
            i["pid"].to_string(),
            i["requests"].to_string(),
            i["rate_limited"].to_string(),
            used_ago(i["started_ms"].as_u64(), now),
            used_ago(i["seen_ms"].as_u64(), now),
        ]);
    }
    print_table(&table);
}

/// The `model_rests` of a key in `/_roo/status`.
fn model_rests_of(key: &Value) -> Vec<ScopedRest> {
    key["model_rests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            Some(ScopedRest {
                scope: r["scope"].as_str()?.to_string(),
                seconds_left: r["seconds_left"].as_u64()?,
            })
        })
        .collect()
}

struct Row<'a> {
    entry: &'a KeyEntry,
    state: KeyStatus,
    /// Seconds of rest left (`state::rest_seconds`).
    left: Option<u64>,
    model_rests: Vec<ScopedRest>,
    last_used_ms: Option<u64>,
}

/// A key's state with its rests for some models: `ready; model gemini-2.5-pro 37s`.
fn with_model_rests(state: String, rests: &[ScopedRest]) -> String {
    if rests.is_empty() {
        return state;
    }
    let rests = ScopedRest::describe(rests);
    format!("{state}; {rests}")
}

/// `42s`, `5m`, `3h 20m`, `2d`: how long ago, or how long up. A rest's time left is
/// written by `state::rest_text`.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs_f64().ceil() as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long `keys check` waits for one key's answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

fn check(
    path: PathBuf,
    args: CheckArgs,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<u8, Error> {
    let (provider, upstream) = config::upstream(args.provider, args.upstream, env)?;
    let file = store::load_with_env(&path, env)?;
    match file.source {
        store::Source::Env(variable) => {
            outln!("keys from {variable} (no keys file at {})", path.display())
        }
        _ => outln!("keys file: {}", path.display()),
    }
    if file.entries.is_empty() {
        outln!("no keys to check; add one with: roo-proxy keys add");
        return Ok(0);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(Some(CHECK_TIMEOUT))
        .build()
        .into();
    // Each key is asked at its pool's base URL, as the proxy would send it: the pool's
    // --pool-upstream, else --upstream for --provider's pools, else its provider's.
    let upstreams = pools::Upstreams {
        default: provider,
        default_url: upstream,
        overrides: config::pool_upstreams(&args.pool_upstream, true, env)?,
    };
    let asks: Vec<(&KeyEntry, Provider, Result<String, String>)> = file
        .entries
        .iter()
        .map(|entry| {
            let (pool, theirs) = pools::home_of(entry, provider);
            let url = upstreams
                .of(&pool, theirs)
                .map(|base| match theirs.check() {
                    Check::Credit => format!("{base}/key"),
                    Check::Models(path) => format!("{base}{path}"),
                });
            (entry, theirs, url)
        })
        .collect();
    let mut told: Vec<String> = Vec::new();
    for (entry, theirs, url) in &asks {
        let (pool, _) = pools::home_of(entry, provider);
        if !told.contains(&pool) {
            match url {
                Ok(url) => outln!("pool {pool} ({theirs}): asking {url}"),
                Err(why) => outln!("pool {pool} ({theirs}): not checked: {why}"),
            }
            told.push(pool);
        }
    }
    let results = in_parallel(&asks, CHECK_WORKERS, |(entry, theirs, url)| {
        let url = url.as_ref().ok()?;
        Some(check_one(&agent, url, &entry.key, *theirs))
    });
    let (mut checked, mut bad) = (0, 0);
    for ((entry, _, _), result) in asks.iter().zip(results) {
        match result {
            Some((valid, text)) => {
                checked += 1;
                bad += usize::from(!valid);
                outln!("{}  {text}", entry.name());
            }
            None => outln!("{}  not checked: its pool has no base URL", entry.name()),
        }
    }
    outln!(
        "{} of {} key{} valid",
        checked - bad,
        checked,
        plural(checked)
    );
    Ok(u8::from(bad > 0))
}

/// How many keys `keys check` asks about at once: a slow key does not hold up the
/// others, and a file of 10,000 keys does not open 10,000 connections at once.
const CHECK_WORKERS: usize = 8;

/// `work` on each item, on at most `workers` threads (this one included), the results in
/// the items' order. A thread that cannot start is not needed: the ones that did, or
/// this thread alone, do its share.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(items.len()));
    let run = || {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            let result = work(item);
            done.lock().unwrap().push((i, result));
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..workers.min(items.len()) {
            if std::thread::Builder::new()
                .name("keys-check".into())
                .spawn_scoped(scope, run)
                .is_err()
            {
                break;
            }
        }
        run();
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, result)| result).collect()
}

/// Asks the provider's check endpoint about one key: (valid, what to print). Only
/// OpenRouter's `/key` tells credit; a model list tells validity.
fn check_one(agent: &ureq::Agent, url: &str, key: &ApiKey, provider: Provider) -> (bool, String) {
    let auth = provider.auth();
    let (name, value) = auth.header(key.expose());
    let mut request = agent.get(url).header(name, &value);
    for &(name, value) in auth.defaults() {
        request = request.header(name, value);
    }
    let response = request.call();
    let mut response = match response {
        Ok(response) => response,
        Err(e) => {
            return (
                false,
                format!(
                    "error: {}",
                    key::redact(&crate::outbound::upstream::describe(&e), [key])
                ),
            );
        }
    };
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1024 * 1024)
        .read_to_vec()
        .unwrap_or_default();
    // Masked before the message is cut short, so the cut never keeps part of the key.
    let body = key::redact_bytes(&body, [key]).into_owned();
    let message = crate::rotation::classify::error_message(&body)
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match status {
        200..=299 if provider.check() != Check::Credit => (true, "valid".to_string()),
        200..=299 => {
            let data = serde_json::from_slice::<Value>(&body)
                .ok()
                .map(|v| v["data"].clone())
                .unwrap_or_default();
            let money = |field: &str| match data[field].as_f64() {
                Some(n) => format!("${n:.2}"),
                None => "none".to_string(),
            };
            let free = match data["is_free_tier"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            let text = format!(
                "valid  usage {}  limit {}  remaining {}  free tier {free}",
                money("usage"),
                money("limit"),
                money("limit_remaining")
            );
            (true, text)
        }
        401 => (false, format!("invalid (401{message})")),
        402 => (false, format!("out of credits (402{message})")),
        _ => (false, format!("HTTP {status}{message}")),
    }
}

/// Warnings a person should see when a keys file is written: readable by others, or
/// about to be committed to git.
fn warn_about_exposure(path: &Path) {
    for warning in store::permission_warning(path)
        .into_iter()
        .chain(store::git_warning(path))
    {
        errln!("warning: {warning}");
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_run_on_a_bounded_set_of_threads_and_keep_the_order() {
        use std::sync::{Condvar, Mutex};
        let items: Vec<usize> = (0..40).collect();
        // (running now, most at once); each call waits (at most 50 ms) for a ninth to run
        // beside it, so a version that started more threads shows more than 8 at once.
        let running = Mutex::new((0usize, 0usize));
        let changed = Condvar::new();
        let results = in_parallel(&items, 8, |&i| {
            let mut guard = running.lock().unwrap();
            guard.0 += 1;
            guard.1 = guard.1.max(guard.0);
            changed.notify_all();
            let (mut guard, _) = changed
                .wait_timeout_while(guard, Duration::from_millis(50), |r| r.0 <= 8)
                .unwrap();
            guard.0 -= 1;
            i * 2
        });
        assert_eq!(results, (0..40).map(|i| i * 2).collect::<Vec<_>>());
        let most = running.lock().unwrap().1;
        assert!((1..=8).contains(&most), "{most} keys checked at once");
        assert_eq!(in_parallel(&[] as &[u8], 8, |_| 1), Vec::<i32>::new());
        assert_eq!(in_parallel(&[1, 2, 3], 0, |&x| x + 1), [2, 3, 4]);
    }

    #[test]
    fn durations_read_at_a_glance() {
        let d = |s: u64| short_duration(Duration::from_secs(s));
        assert_eq!(
            [
                d(0),
                d(42),
                d(119),
                d(120),
                d(3599),
                d(7200),
                d(7260),
                d(200_000)
            ],
            ["0s", "42s", "119s", "2m", "59m", "2h 0m", "2h 1m", "2d"]
        );
        assert_eq!(short_duration(Duration::from_millis(41_200)), "42s");
    }
}

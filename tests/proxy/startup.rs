//! Starting up: flags, environment, the start line, and keys files good and bad.

use crate::support::*;

#[test]
fn the_start_line_says_where_what_and_how_many() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(3).start();
    let line = &proxy.start_line;
    assert!(
        line.contains(&format!("http://127.0.0.1:{}", proxy.port)),
        "{line}"
    );
    assert!(line.contains(&mock.base()), "{line}");
    assert!(line.contains("with 3 keys"), "{line}");
    let keys_file = proxy.dir.path().join("keys.json");
    assert!(line.contains(&keys_file.display().to_string()), "{line}");
}

/// Variables reach a running proxy. That every flag has one is checked, flag by flag
/// from `--help`, by `config::tests::every_flag_has_an_environment_variable`.
#[test]
fn environment_variables_reach_the_running_proxy() {
    let mock = Mock::start();
    let dir = TempDir::new();
    let keys = dir.path().join("elsewhere.json");
    std::fs::write(
        &keys,
        format!(r#"{{"keys":[{{"key":"{}","label":"work"}}]}}"#, key(1)),
    )
    .unwrap();
    let proxy = Proxy::bare()
        .env("ROO_PROXY_UPSTREAM", &mock.base())
        .env("ROO_PROXY_KEYS_FILE", keys.to_str().unwrap())
        .env("ROO_PROXY_HOST", "127.0.0.1")
        .env("ROO_PROXY_COOLDOWN", "9")
        .env("ROO_PROXY_MAX_ATTEMPTS", "1")
        .start();
    assert!(
        proxy.start_line.contains("with 1 key from"),
        "{}",
        proxy.start_line
    );
    assert!(
        proxy.start_line.contains("elsewhere.json"),
        "{}",
        proxy.start_line
    );
    mock.plan(&key(1), &["429bare"]);
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    assert!((8..=9).contains(&reply.header("retry-after").unwrap().parse::<u64>().unwrap()));
    // Labels name keys in the logs.
    proxy.wait_for_log(&format!("key 'work' ({}) rests for 9 s", masked(1)));
}

#[test]
fn a_flag_wins_over_its_environment_variable() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .env("ROO_PROXY_UPSTREAM", "http://127.0.0.1:9/nowhere")
        .start();
    assert!(
        proxy.start_line.contains(&mock.base()),
        "{}",
        proxy.start_line
    );
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn help_lists_every_flag_and_version_prints_one() {
    let (status, out, _) = Proxy::bare().arg("--help").run();
    assert!(status.success());
    for flag in [
        "--host",
        "--port",
        "--upstream",
        "--keys-file",
        "--cooldown",
        "--max-attempts",
        "--version",
        "ROO_PROXY_",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
    let (status, out, _) = Proxy::bare().arg("--version").run();
    assert!(status.success());
    assert_eq!(
        out.trim(),
        format!("roo-proxy {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flags_and_values_stop_with_a_clear_message() {
    let (status, _, err) = Proxy::bare().arg("--prot").arg("1").run();
    assert!(!status.success());
    assert!(err.contains("--prot"), "{err}");
    let (status, _, err) = Proxy::bare().arg("--upstream").arg("openrouter.ai").run();
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("--upstream 'openrouter.ai'"), "{err}");
    let (status, _, err) = Proxy::bare().env("ROO_PROXY_COOLDOWN", "soon").run();
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("ROO_PROXY_COOLDOWN='soon'"), "{err}");
}

#[test]
fn sizes_and_counts_out_of_their_range_stop_the_start_naming_the_range() {
    for (flag, value, range) in [
        ("--max-header-size", "1", "give 4KiB to 1MiB"),
        (
            "--max-connections",
            "18446744073709551615",
            "give 1 to 65536",
        ),
        ("--max-headers", "100000000", "give 32 to 1024"),
        ("--max-body", "10", "give 1KiB to 4GiB"),
    ] {
        let (status, out, err) = Proxy::bare().arg(flag).arg(value).run();
        assert_eq!(status.code(), Some(2), "{flag} {value}: {out}{err}");
        assert!(
            err.contains(&format!("{flag} '{value}': out of range")),
            "{err}"
        );
        assert!(err.contains(range), "{err}");
        assert!(err.contains("leave it out for the default"), "{err}");
    }
}

/// A keys file that is no file stops the start at once, naming the path and what it is;
/// opening a FIFO must not wait for a writer that never comes.
#[test]
fn a_keys_file_that_is_a_fifo_socket_or_folder_stops_the_start_naming_it() {
    type Make = fn(&std::path::Path);
    #[allow(unused_mut)] // Only Unix adds cases.
    let mut cases: Vec<(&str, Make)> =
        vec![("a folder", |path| std::fs::create_dir(path).unwrap())];
    #[cfg(unix)]
    cases.push(("a FIFO (named pipe)", |path| make_fifo(path)));
    #[cfg(unix)]
    cases.push(("a socket", |path| {
        // Bound, then the listener is dropped: the socket file stays.
        std::os::unix::net::UnixListener::bind(path).unwrap();
    }));
    for (what, make) in cases {
        let builder = Proxy::bare();
        let path = builder_dir(&builder).join("keys.json");
        make(&path);
        let (status, out, err) = builder.run();
        assert_eq!(status.code(), Some(2), "{what}: {out}{err}");
        let expected = format!(
            "cannot read keys file '{}': it is {what}, not a regular file; give the path of a keys file",
            path.display()
        );
        assert!(err.contains(&expected), "{what}: {err}");
    }
}

/// The state file is a cache: one that is no file is reported with its path and kind,
/// and the proxy starts and serves without it.
#[cfg(unix)]
#[test]
fn a_state_file_that_is_a_fifo_is_ignored_with_a_warning_and_the_proxy_serves() {
    let mock = Mock::start();
    let builder = Proxy::with(&mock).keys(1);
    let state = builder_dir(&builder).join("keys.json.state");
    make_fifo(&state);
    let proxy = builder.start();
    proxy.wait_for_log(&format!(
        "ignoring the state file '{}': it is a FIFO (named pipe), not a regular file",
        state.display()
    ));
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn a_malformed_keys_file_stops_the_start_with_path_line_and_column() {
    let bad = format!(
        "[\n  \"{}\",\n  \"{}\"\n  \"{}\"\n]\n",
        key(1),
        key(2),
        key(3)
    );
    let builder = Proxy::bare().keys_file(&bad);
    let (status, out, err) = builder.run();
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(
        err.contains("keys.json' is not valid JSON at line 4, column 3"),
        "{err}"
    );
    for n in 1..=3 {
        assert!(!err.contains(&key(n)), "a key leaked into: {err}");
    }
}

#[test]
fn a_keys_file_with_a_bad_entry_names_the_entry() {
    let (status, _, err) = Proxy::bare()
        .keys_file(r#"["sk-or-v1-good0000000000000000000000", "has space"]"#)
        .run();
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("entry 2: the key has whitespace at character 4"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (status, _, err) = Proxy::no_args().arg("--port").arg(&port).run();
    assert_eq!(status.code(), Some(1));
    assert!(err.contains("the port is in use"), "{err}");
}

#[test]
fn keys_files_written_by_windows_powershell_are_read() {
    let mock = Mock::start();
    // Windows PowerShell 5's Out-File writes UTF-16LE with a byte-order mark.
    let text = format!(r#"["{}","{}"]"#, key(1), key(2));
    let bytes: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect();
    let builder = Proxy::with(&mock);
    std::fs::write(builder_dir(&builder).join("keys.json"), bytes).unwrap();
    let proxy = builder.start();
    assert!(
        proxy.start_line.contains("with 2 keys"),
        "{}",
        proxy.start_line
    );
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn durations_past_a_day_stop_the_start_with_a_clear_message() {
    for flag in [
        "--client-timeout",
        "--idle-timeout",
        "--wait",
        "--connect-timeout",
        "--headers-timeout",
        "--silence-timeout",
        "--shutdown-grace",
        "--cooldown",
    ] {
        for value in ["18446744073709551615", "18446744073709551615h", "25h"] {
            let (status, _, stderr) = Proxy::bare().arg(flag).arg(value).run();
            assert_eq!(status.code(), Some(2), "{flag} {value}: {stderr}");
            assert!(
                stderr.contains(&format!("{flag} '{value}': must be at most 24h")),
                "{flag} {value}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
    let variable = Proxy::bare()
        .env("ROO_PROXY_IDLE_TIMEOUT", "18446744073709551615")
        .run();
    assert_eq!(variable.0.code(), Some(2), "{}", variable.2);
    assert!(
        variable.2.contains("ROO_PROXY_IDLE_TIMEOUT"),
        "{}",
        variable.2
    );
}

#[test]
fn bad_redis_urls_and_ca_files_stop_the_start_without_echoing_a_password() {
    let (status, _, err) = Proxy::bare()
        .keys(1)
        .arg("--redis")
        .arg("http://:hunter2@localhost")
        .run();
    assert!(!status.success());
    assert!(err.contains("--redis"), "{err}");
    assert!(err.contains("redis://"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let (status, _, err) = Proxy::bare()
        .keys(1)
        .env("ROO_PROXY_REDIS", "redis://:hunter2@[::1")
        .run();
    assert!(!status.success());
    assert!(err.contains("ROO_PROXY_REDIS"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // A build without the feature says how to get one, for a good URL too.
    if cfg!(not(feature = "redis")) {
        let (status, _, err) = Proxy::bare()
            .keys(1)
            .arg("--redis")
            .arg("redis://127.0.0.1:6379")
            .run();
        assert!(!status.success());
        assert!(err.contains("--features redis"), "{err}");
    }
    if cfg!(feature = "redis") {
        // A private CA only means something for a Redis reached over TLS.
        let (status, _, err) = Proxy::bare()
            .keys(1)
            .arg("--redis")
            .arg("redis://127.0.0.1:6379")
            .arg("--redis-ca")
            .arg("/x/ca.pem")
            .run();
        assert_eq!(status.code(), Some(2), "{err}");
        assert!(err.contains("--redis-ca '/x/ca.pem'"), "{err}");
        assert!(err.contains("rediss://"), "{err}");
        // A CA file that is missing, or holds no certificate, stops the start.
        let dir = crate::support::TempDir::new();
        let junk = dir.path().join("ca.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        for (file, why) in [
            (dir.path().join("missing.pem"), "cannot be read"),
            (junk, "holds no PEM certificate"),
        ] {
            let (status, _, err) = Proxy::bare()
                .keys(1)
                .arg("--redis")
                .arg("rediss://127.0.0.1:6380")
                .arg("--redis-ca")
                .arg(file.to_str().unwrap())
                .run();
            assert_eq!(status.code(), Some(2), "{err}");
            assert!(err.contains("Redis CA file"), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }
}

#[test]
fn a_keys_file_larger_than_any_keys_file_stops_the_start_instead_of_filling_memory() {
    // Valid JSON behind 16 MiB of spaces: read whole, it would load. A path such as
    // /dev/zero would be read forever, until the memory runs out.
    let big = format!("{}[\"{}\"]", " ".repeat(16 * 1024 * 1024 + 1), key(1));
    let (status, out, err) = Proxy::bare().keys_file(&big).run();
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("cannot read keys file"), "{err}");
    assert!(err.contains("larger than 16 MiB"), "{err}");
}

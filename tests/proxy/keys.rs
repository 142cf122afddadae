//! `roo-proxy keys …` and the wrapper scripts: real processes on real files.

use std::fs;
use std::process::{Command, Stdio};
use std::thread;

use serde_json::Value;

use crate::support::*;

/// Asserts that no whole key of `1..=n` appears in `text`.
fn assert_no_key(text: &str, n: usize) {
    for i in 1..=n {
        assert!(!text.contains(&key(i)), "key {i} printed whole:\n{text}");
    }
}

#[test]
fn add_creates_a_private_file_in_object_form_and_prints_only_masked_keys() {
    let dir = TempDir::new();
    let ran = keys_cmd(dir.path(), &["add", &key(1), "--label", "work"], "");
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    // No keys.json here: the per-user file, in a folder made for it.
    let file = user_keys_file_in(dir.path());
    assert!(!dir.path().join("keys.json").exists());
    assert!(
        ran.stdout
            .contains(&format!("keys file: {}", file.display())),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains(&format!("added 'work' ({}); 1 key in the file", masked(1))),
        "{}",
        ran.stdout
    );
    assert_no_key(&ran.all(), 1);
    let json: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(json["keys"][0]["key"], key(1));
    assert_eq!(json["keys"][0]["label"], "work");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let folder = file.parent().unwrap();
        assert_eq!(
            fs::metadata(folder).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

#[test]
fn add_reads_the_key_from_standard_input() {
    let dir = TempDir::new();
    for args in [&["add"][..], &["add", "-"][..]] {
        let n = args.len();
        let ran = keys_cmd(dir.path(), args, &format!("  {}\n", key(n)));
        assert_eq!(ran.code, Some(0), "{}", ran.all());
        assert_no_key(&ran.all(), 2);
    }
    assert_eq!(keys_in(&user_keys_file_in(dir.path())), [key(1), key(2)]);
}

#[test]
fn add_refuses_bad_keys_and_accepts_duplicates_quietly() {
    let dir = TempDir::new();
    for (input, expected) in [
        ("", "the key is empty"),
        ("sk-or v1", "whitespace at character 6"),
        ("sk-\u{7}x", "control character"),
    ] {
        let ran = keys_cmd(dir.path(), &["add"], input);
        assert_eq!(ran.code, Some(1), "{input:?}: {}", ran.all());
        assert!(ran.stderr.contains(expected), "{input:?}: {}", ran.stderr);
    }
    assert!(
        !user_keys_file_in(dir.path()).exists(),
        "a refused key still wrote the file"
    );
    assert_eq!(keys_cmd(dir.path(), &["add", &key(1)], "").code, Some(0));
    let again = keys_cmd(dir.path(), &["add", &key(1)], "");
    assert_eq!(again.code, Some(0));
    assert!(
        again.stdout.contains(&format!(
            "{} is already in the file; nothing changed",
            masked(1)
        )),
        "{}",
        again.stdout
    );
    assert_eq!(keys_in(&user_keys_file_in(dir.path())), [key(1)]);
}

#[test]
fn a_malformed_keys_file_is_never_rewritten() {
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    let bad = format!("[\"{}\",\n  oops]", key(1));
    fs::write(&file, &bad).unwrap();
    for args in [
        &["add", &key(2)][..],
        &["remove", &key(1)[..12]][..],
        &["list"][..],
    ] {
        let ran = keys_cmd(dir.path(), args, "");
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.all());
        assert!(
            ran.stderr.contains("is not valid JSON at line 2, column 3"),
            "{}",
            ran.stderr
        );
        assert_no_key(&ran.all(), 2);
    }
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        bad,
        "the file was changed"
    );
}

#[test]
fn rewrites_keep_unknown_fields_and_turn_legacy_arrays_into_objects() {
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(&file, format!(r#"{{"version":3,"keys":[{{"key":"{}","label":"a","account":"acme","note":{{"x":1}}}}]}}"#, key(1))).unwrap();
    assert_eq!(keys_cmd(dir.path(), &["add", &key(2)], "").code, Some(0));
    let json: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(json["version"], 3);
    assert_eq!(json["keys"][0]["account"], "acme");
    assert_eq!(json["keys"][0]["note"]["x"], 1);
    assert_eq!(json["keys"][1]["key"], key(2));

    fs::write(&file, format!(r#"["{}"]"#, key(1))).unwrap();
    assert_eq!(keys_cmd(dir.path(), &["add", &key(2)], "").code, Some(0));
    let json: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(json["keys"][0], serde_json::json!({"key": key(1)}));
}

#[test]
fn remove_by_prefix_or_label_with_guards() {
    let dir = TempDir::new();
    for (n, label) in [(1, "work"), (2, "home"), (3, "spare")] {
        assert_eq!(
            keys_cmd(dir.path(), &["add", &key(n), "--label", label], "").code,
            Some(0)
        );
    }
    let file = user_keys_file_in(dir.path());

    let short = keys_cmd(dir.path(), &["remove", "sk-or-v"], "");
    assert_eq!(short.code, Some(1));
    assert!(
        short.stderr.contains("at least 8 characters"),
        "{}",
        short.stderr
    );

    let many = keys_cmd(dir.path(), &["remove", "sk-or-v1-"], "");
    assert_eq!(many.code, Some(1));
    assert!(
        many.stderr.contains("3 keys match") && many.stderr.contains("--all"),
        "{}",
        many.stderr
    );
    assert_no_key(&many.all(), 3);

    let none = keys_cmd(dir.path(), &["remove", "sk-or-v1-zz"], "");
    assert_eq!(none.code, Some(1));
    assert!(
        none.stderr.contains("no key starts with that prefix"),
        "{}",
        none.stderr
    );
    assert_eq!(keys_in(&file).len(), 3, "a refused remove changed the file");

    let by_label = keys_cmd(dir.path(), &["remove", "home"], "");
    assert_eq!(by_label.code, Some(0), "{}", by_label.all());
    assert!(
        by_label
            .stdout
            .contains(&format!("removed 'home' ({})", masked(2))),
        "{}",
        by_label.stdout
    );
    let by_prefix = keys_cmd(dir.path(), &["remove", &key(3)[..14]], "");
    assert_eq!(by_prefix.code, Some(0), "{}", by_prefix.all());
    assert!(
        by_prefix.stdout.contains("1 key left"),
        "{}",
        by_prefix.stdout
    );
    assert_eq!(keys_in(&file), [key(1)]);

    let all = keys_cmd(dir.path(), &["remove", "sk-or-v1-", "--all"], "");
    assert_eq!(all.code, Some(0));
    assert!(keys_in(&file).is_empty());
}

#[test]
fn list_shows_masked_keys_labels_and_state() {
    let dir = TempDir::new();
    assert_eq!(
        keys_cmd(dir.path(), &["add", &key(1), "--label", "work"], "").code,
        Some(0)
    );
    assert_eq!(keys_cmd(dir.path(), &["add", &key(2)], "").code, Some(0));
    let ran = keys_cmd(dir.path(), &["list"], "");
    assert_eq!(ran.code, Some(0));
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[0].starts_with("keys file: "), "{}", ran.stdout);
    assert!(
        lines[2].starts_with(&masked(1))
            && lines[2].contains("work")
            && lines[2].contains("ready")
            && lines[2].ends_with("never"),
        "{}",
        ran.stdout
    );
    // It says where the states come from, and where the live ones are.
    assert_eq!(
        lines.last(),
        Some(
            &"states as the proxy last saved them, up to a second behind a running one; `roo-proxy status` asks it live"
        ),
        "{}",
        ran.stdout
    );
    assert_no_key(&ran.all(), 2);

    let json = keys_cmd(dir.path(), &["list", "--json"], "");
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["keys"][1]["key"], masked(2));
    assert_eq!(v["keys"][1]["state"], "ready");
    assert!(v["keys_file"].as_str().unwrap().ends_with("keys.json"));
    assert_no_key(&json.all(), 2);
}

#[test]
fn check_asks_the_upstream_about_each_key() {
    let mock = Mock::start();
    mock.plan(&key(2), &["401"]);
    let dir = TempDir::new();
    for n in 1..=2 {
        assert_eq!(keys_cmd(dir.path(), &["add", &key(n)], "").code, Some(0));
    }
    let ran = keys_cmd(dir.path(), &["check", "--upstream", &mock.base()], "");
    assert_eq!(ran.code, Some(1), "one key is invalid: {}", ran.all());
    assert!(
        ran.stdout.contains(&format!(
            "{}  valid  usage $1.50  limit $10.00  remaining $8.50  free tier no",
            masked(1)
        )),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains(&format!("{}  invalid (401: User not found.)", masked(2))),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("1 of 2 keys valid"), "{}", ran.stdout);
    assert_no_key(&ran.all(), 2);
    let targets: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets, ["/api/v1/key", "/api/v1/key"]);
}

#[test]
fn check_masks_a_key_the_upstream_puts_where_its_message_is_cut() {
    let mock = Mock::start();
    mock.plan(&key(1), &["500cut"]);
    let dir = TempDir::new();
    assert_eq!(keys_cmd(dir.path(), &["add", &key(1)], "").code, Some(0));
    let ran = keys_cmd(dir.path(), &["check", "--upstream", &mock.base()], "");
    assert!(ran.stdout.contains("yyyy"), "{}", ran.all());
    let k = key(1);
    for piece in k.as_bytes().windows(16) {
        let piece = std::str::from_utf8(piece).unwrap();
        assert!(!ran.all().contains(piece), "{piece} printed: {}", ran.all());
    }
}

#[test]
fn a_dead_upstream_fails_the_check_without_stopping_it() {
    let mock = Mock::start();
    let dead = mock.base();
    drop(mock);
    let dir = TempDir::new();
    for n in 1..=2 {
        assert_eq!(keys_cmd(dir.path(), &["add", &key(n)], "").code, Some(0));
    }
    let ran = keys_cmd(dir.path(), &["check", "--upstream", &dead], "");
    assert_eq!(ran.code, Some(1));
    assert_eq!(
        ran.stdout
            .lines()
            .filter(|l| l.contains("  error: "))
            .count(),
        2,
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("0 of 2 keys valid"), "{}", ran.stdout);
}

#[test]
fn two_hundred_adds_from_two_shells_at_once_lose_no_key() {
    let dir = TempDir::new();
    let path = dir.path().to_path_buf();
    let shells: Vec<_> = (0..2)
        .map(|shell| {
            let path = path.clone();
            thread::spawn(move || {
                for i in 0..100 {
                    let ran = keys_cmd(&path, &["add", &key(1000 + shell * 100 + i)], "");
                    assert_eq!(ran.code, Some(0), "{}", ran.all());
                }
            })
        })
        .collect();
    for shell in shells {
        shell.join().unwrap();
    }
    let mut keys = keys_in(&user_keys_file_in(&path));
    keys.sort();
    let mut expected: Vec<String> = (1000..1200).map(key).collect();
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn a_kill_between_write_and_rename_leaves_the_old_file() {
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(&file, format!(r#"["{}"]"#, key(1))).unwrap();
    let before = fs::read_to_string(&file).unwrap();
    let temporaries = || -> Vec<String> {
        fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    };
    for round in 0..3 {
        // A debug build waits before the rename with this variable set (src/keys/store.rs),
        // and says so: the kill provably lands after the new text is written in full and
        // before it replaces the file.
        let mut child = Command::new(PROXY)
            .current_dir(dir.path())
            .args(["keys", "add", &key(2 + round)])
            .env("ROO_PROXY_TEST_PAUSE_BEFORE_RENAME", "1")
            .env_remove("ROO_PROXY_KEYS_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.starts_with("paused before the rename") {
                    let _ = tx.send(line);
                }
            }
        });
        let paused = rx.recv_timeout(DEADLINE);
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
        assert!(paused.is_ok(), "the writer never reached the rename");
        assert_eq!(temporaries().len(), 1, "the kill did not land mid-write");
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            before,
            "the file changed"
        );
    }
    // The next writer removes what the killed ones left and writes the new file whole.
    assert_eq!(keys_cmd(dir.path(), &["add", &key(9)], "").code, Some(0));
    assert_eq!(keys_in(&file), [key(1), key(9)]);
    assert!(temporaries().is_empty(), "{:?}", temporaries());
}

#[cfg(unix)]
#[test]
fn a_keys_file_others_can_read_gets_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(&file, format!(r#"["{}"]"#, key(1))).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let ran = keys_cmd(dir.path(), &["list"], "");
    assert!(
        ran.stderr
            .contains("can be read by other users (mode 644); run: chmod 600"),
        "{}",
        ran.stderr
    );
}

#[test]
fn a_keys_file_git_would_commit_gets_a_warning() {
    let dir = TempDir::new();
    if Command::new("git").arg("--version").output().is_err() {
        eprintln!("git is not installed; skipping");
        return;
    }
    let git = |args: &[&str]| run_in(dir.path(), "git", args, "", &[]);
    assert_eq!(git(&["init", "-q"]).code, Some(0));
    let ran = keys_cmd(dir.path(), &["add", &key(1)], "");
    assert!(
        ran.stderr
            .contains("inside a git work tree and not ignored"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("add this line to .gitignore: keys.json*"),
        "{}",
        ran.stderr
    );

    fs::write(dir.path().join(".gitignore"), "keys.json*\n").unwrap();
    let ran = keys_cmd(dir.path(), &["add", &key(2)], "");
    assert!(!ran.stderr.contains("git"), "{}", ran.stderr);

    // The proxy warns at start too.
    fs::remove_file(dir.path().join(".gitignore")).unwrap();
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).in_dir(dir).start();
    proxy.wait_for_log("inside a git work tree and not ignored");
}

#[cfg(unix)]
#[test]
fn the_shell_wrappers_find_the_binary_and_call_it() {
    let dir = TempDir::new();
    let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");
    let bin_dir = std::path::Path::new(PROXY)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let path = format!("{bin_dir}:/usr/bin:/bin");
    let env = [("PATH", path.as_str())];
    let add = run_in(
        dir.path(),
        "sh",
        &[
            &format!("{scripts}/add_roo_key.sh"),
            &key(1),
            "--label",
            "w",
        ],
        "",
        &env,
    );
    assert_eq!(add.code, Some(0), "{}", add.all());
    let add_stdin = run_in(
        dir.path(),
        "sh",
        &[&format!("{scripts}/add_roo_key.sh")],
        &key(2),
        &env,
    );
    assert_eq!(add_stdin.code, Some(0), "{}", add_stdin.all());
    assert_eq!(keys_in(&user_keys_file_in(dir.path())), [key(1), key(2)]);
    let remove = run_in(
        dir.path(),
        "sh",
        &[&format!("{scripts}/remove_roo_key.sh"), "w"],
        "",
        &env,
    );
    assert_eq!(remove.code, Some(0), "{}", remove.all());
    assert_eq!(keys_in(&user_keys_file_in(dir.path())), [key(2)]);
    assert_no_key(
        &format!("{}{}{}", add.all(), add_stdin.all(), remove.all()),
        2,
    );
}

#[cfg(unix)]
#[test]
fn the_shell_wrappers_say_clearly_when_there_is_no_binary() {
    let dir = TempDir::new();
    let script = dir.path().join("add_roo_key.sh");
    fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/add_roo_key.sh"),
        &script,
    )
    .unwrap();
    let ran = run_in(
        dir.path(),
        "sh",
        &[script.to_str().unwrap(), &key(1)],
        "",
        &[("PATH", "/usr/bin:/bin")],
    );
    assert_eq!(ran.code, Some(127), "{}", ran.all());
    assert!(
        ran.stderr.contains("cannot find roo-proxy")
            && ran.stderr.contains("cargo build --release"),
        "{}",
        ran.stderr
    );
    assert_no_key(&ran.all(), 1);
}

#[test]
fn without_a_local_keys_file_every_folder_shares_the_per_user_one() {
    let dir = TempDir::new();
    let home = home_in(dir.path());
    let appdata = home.join("AppData");
    let home_env = [
        ("HOME", home.to_str().unwrap()),
        ("APPDATA", appdata.to_str().unwrap()),
    ];
    let (here, there) = (dir.path().join("here"), dir.path().join("there"));
    fs::create_dir_all(&here).unwrap();
    fs::create_dir_all(&there).unwrap();
    let user_file = user_keys_file_in(dir.path());
    let in_folder = |folder: &std::path::Path, args: &[&str]| {
        let mut all = vec!["keys"];
        all.extend_from_slice(args);
        run_in(folder, PROXY, &all, "", &home_env)
    };

    let add = in_folder(&here, &["add", &key(1)]);
    assert_eq!(add.code, Some(0), "{}", add.all());
    assert!(
        add.stdout
            .contains(&format!("keys file: {}", user_file.display())),
        "{}",
        add.stdout
    );
    let list = in_folder(&there, &["list"]);
    assert!(
        list.stdout
            .contains(&format!("keys file: {}", user_file.display())),
        "{}",
        list.stdout
    );
    assert!(list.stdout.contains(&masked(1)), "{}", list.stdout);

    // A keys.json where the command runs is used, as before the per-user file existed.
    let local = there.join("keys.json");
    fs::write(&local, format!(r#"["{}"]"#, key(2))).unwrap();
    let list = in_folder(&there, &["list"]);
    assert!(
        list.stdout
            .contains(&format!("keys file: {}", local.display())),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains(&masked(2)) && !list.stdout.contains(&masked(1)),
        "{}",
        list.stdout
    );

    // The proxy started elsewhere serves the key added here.
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).in_dir(dir).start();
    assert!(
        proxy
            .start_line
            .contains(&format!("with 1 key from {}", user_file.display())),
        "{}",
        proxy.start_line
    );
}

#[test]
fn a_keys_file_in_a_missing_folder_gets_the_folder_or_a_hint() {
    let dir = TempDir::new();
    let deep = dir.path().join("new").join("deeper").join("keys.json");
    let deep_arg = deep.to_str().unwrap();
    let remove = keys_cmd(dir.path(), &["remove", "work", "--keys-file", deep_arg], "");
    assert_ne!(remove.code, Some(0));
    assert!(
        remove.stderr.contains("does not exist") || remove.stderr.contains("cannot be used"),
        "{}",
        remove.stderr
    );
    assert!(
        remove.stderr.contains("roo-proxy keys add"),
        "{}",
        remove.stderr
    );
    assert!(!deep.parent().unwrap().exists(), "remove made a folder");

    let add = keys_cmd(dir.path(), &["add", &key(1), "--keys-file", deep_arg], "");
    assert_eq!(add.code, Some(0), "{}", add.all());
    assert_eq!(keys_in(&deep), [key(1)]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for folder in [
            deep.parent().unwrap(),
            deep.parent().unwrap().parent().unwrap(),
        ] {
            assert_eq!(
                fs::metadata(folder).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
    }
}

/// Every command refuses a keys file (or lock file) that is a FIFO at once, naming the
/// path and what it is, and leaves it alone.
#[cfg(unix)]
#[test]
fn keys_commands_refuse_a_fifo_without_waiting_on_it() {
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    make_fifo(&file);
    let args: [&[&str]; 5] = [
        &["list"],
        &["add", &key(1)],
        &["remove", "sk-or-v1-0000"],
        &["disable", "sk-or-v1-0000"],
        &["check"],
    ];
    for args in args {
        let ran = keys_cmd(dir.path(), args, "");
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.all());
        assert!(
            ran.stderr.contains(&format!(
                "keys file '{}': it is a FIFO (named pipe), not a regular file",
                file.display()
            )),
            "{args:?}: {}",
            ran.all()
        );
    }
    let kind = fs::symlink_metadata(&file).unwrap().file_type();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&kind));

    let dir = TempDir::new();
    let lock = dir.path().join("keys.json.lock");
    make_fifo(&lock);
    let ran = keys_cmd(
        dir.path(),
        &["add", &key(1), "--keys-file", "keys.json"],
        "",
    );
    assert_ne!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stderr.contains(&format!(
            "cannot lock '{}': it is a FIFO (named pipe), not a regular file; remove it",
            lock.display()
        )),
        "{}",
        ran.all()
    );
}

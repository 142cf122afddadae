//! An encrypted keys file (`keys encrypt` / `keys decrypt`): every command and the proxy
//! on real files, the secret from `ROO_PROXY_PASSPHRASE` and from the Linux kernel
//! keyring, the errors for a wrong or missing secret, and `age` itself opening our file.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

const PASSPHRASE: &str = "correct horse battery staple";

/// `roo-proxy keys ARGS` in `dir` with `ROO_PROXY_PASSPHRASE` set to `passphrase`.
fn keys_with(dir: &Path, passphrase: &str, args: &[&str]) -> Ran {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    run_in(
        dir,
        PROXY,
        &all,
        "",
        &[("ROO_PROXY_PASSPHRASE", passphrase)],
    )
}

fn ok(ran: Ran) -> Ran {
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    ran
}

/// Every file in `dir` (the keys file, its lock, state and temporaries), as text.
fn folder_text(dir: &Path) -> String {
    let mut all = String::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_file() {
            all.push_str(&String::from_utf8_lossy(&fs::read(entry.path()).unwrap()));
        }
    }
    all
}

/// Asserts that no file in `dir` holds any of keys `1..=n` (nor their secret middle).
fn assert_no_key_material(dir: &Path, n: usize) {
    let text = folder_text(dir);
    for i in 1..=n {
        assert!(!text.contains(&key(i)), "key {i} readable in the folder");
        assert!(
            !text.contains(&key(i)[12..40]),
            "part of key {i} readable in the folder"
        );
    }
}

fn assert_encrypted(file: &Path) {
    let bytes = fs::read(file).unwrap();
    assert!(
        bytes.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----\n"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

/// A keys file with labels, accounts and fields roo-proxy does not know.
fn rich_keys_file() -> Value {
    json!({
        "comment": "team keys",
        "keys": [
            {"key": key(1), "label": "work", "account": "acme", "note": {"owner": "ana"}},
            {"key": key(2), "label": "spare"},
        ]
    })
}

#[test]
fn every_keys_command_works_on_an_encrypted_file_and_decrypt_gives_it_back() {
    let mock = Mock::start();
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(&file, rich_keys_file().to_string()).unwrap();

    let ran = ok(keys_with(dir.path(), PASSPHRASE, &["encrypt"]));
    assert!(ran.stdout.contains("encrypted 2 keys"), "{}", ran.stdout);
    assert!(
        ran.stdout
            .contains("it opens with ROO_PROXY_PASSPHRASE (not copied into"),
        "{}",
        ran.stdout
    );
    assert_encrypted(&file);
    assert_no_key_material(dir.path(), 2);

    let listed = ok(keys_with(dir.path(), PASSPHRASE, &["list", "--json"]));
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed["keys"][0]["key"], masked(1));
    assert_eq!(listed["keys"][0]["label"], "work");
    assert_eq!(listed["keys"][0]["account"], "acme");
    assert_eq!(listed["keys"][1]["label"], "spare");

    ok(keys_with(
        dir.path(),
        PASSPHRASE,
        &["add", &key(3), "--label", "new", "--account", "acme"],
    ));
    ok(keys_with(dir.path(), PASSPHRASE, &["disable", "spare"]));
    let listed = ok(keys_with(dir.path(), PASSPHRASE, &["list"]));
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with(&masked(2)) && l.contains("disabled")),
        "{}",
        listed.stdout
    );
    ok(keys_with(dir.path(), PASSPHRASE, &["enable", "spare"]));
    ok(keys_with(
        dir.path(),
        PASSPHRASE,
        &["remove", &key(2)[..14]],
    ));
    let checked = ok(keys_with(
        dir.path(),
        PASSPHRASE,
        &["check", "--upstream", &mock.base()],
    ));
    assert!(
        checked.stdout.contains("2 of 2 keys valid"),
        "{}",
        checked.all()
    );
    assert_encrypted(&file);
    assert_no_key_material(dir.path(), 3);
    for ran in [&listed, &checked] {
        assert!(!ran.all().contains(&key(1)), "{}", ran.all());
    }

    let ran = ok(keys_with(dir.path(), PASSPHRASE, &["decrypt"]));
    assert!(ran.stdout.contains("decrypted 2 keys"), "{}", ran.stdout);
    let back: Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    let entries = back["keys"].as_array().unwrap();
    assert_eq!(back["comment"], "team keys", "{back}");
    assert_eq!(entries.len(), 2, "{back}");
    assert_eq!(entries[0]["key"], key(1));
    assert_eq!(entries[0]["label"], "work");
    assert_eq!(entries[0]["account"], "acme");
    assert_eq!(entries[0]["note"], json!({"owner": "ana"}));
    assert_eq!(entries[1]["key"], key(3));
    assert_eq!(entries[1]["label"], "new");
    assert_eq!(entries[1]["account"], "acme");

    let again = ok(keys_with(dir.path(), PASSPHRASE, &["decrypt"]));
    assert!(again.stdout.contains("not encrypted; nothing changed"));
}

#[test]
fn encrypt_then_decrypt_keeps_the_file_byte_for_byte() {
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    let original = format!("[\n  \"{}\",\n  \"{}\"\n]\n", key(1), key(2));
    fs::write(&file, &original).unwrap();
    ok(keys_with(dir.path(), PASSPHRASE, &["encrypt"]));
    let sealed = fs::read(&file).unwrap();
    let again = ok(keys_with(dir.path(), PASSPHRASE, &["encrypt"]));
    assert!(again.stdout.contains("already encrypted; nothing changed"));
    assert_eq!(
        fs::read(&file).unwrap(),
        sealed,
        "encrypting twice changed it"
    );
    ok(keys_with(dir.path(), PASSPHRASE, &["decrypt"]));
    assert_eq!(fs::read_to_string(&file).unwrap(), original);
}

#[test]
fn the_proxy_serves_and_hot_reloads_an_encrypted_file() {
    let mock = Mock::start();
    let builder = Proxy::with(&mock).keys(1);
    let dir = builder_dir(&builder).to_path_buf();
    ok(keys_with(&dir, PASSPHRASE, &["encrypt"]));
    let proxy = builder.env("ROO_PROXY_PASSPHRASE", PASSPHRASE).start();
    assert!(
        proxy.start_line.contains("with 1 key from"),
        "{}",
        proxy.start_line
    );
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(mock.keys_used(), [bearer(1)]);

    ok(keys_with(&dir, PASSPHRASE, &["add", &key(2)]));
    proxy.wait_for_log("keys file changed: 1 added, 0 removed, 2 in the pool");
    ok(keys_with(&dir, PASSPHRASE, &["remove", &key(1)[..14]]));
    proxy.wait_for_log("keys file changed: 0 added, 1 removed, 1 in the pool");
    let before = mock.requests().len();
    for _ in 0..3 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert_eq!(
        mock.keys_used()[before..],
        [bearer(2), bearer(2), bearer(2)]
    );
    eventually("the state file is saved", || {
        dir.join("keys.json.state").exists()
    });
    let logs = proxy.logs();
    assert!(!logs.contains("plain text"), "{logs}");
    assert!(!logs.contains(&key(2)), "{logs}");
    assert_encrypted(&dir.join("keys.json"));
    assert_no_key_material(&dir, 2);
}

#[test]
fn a_plain_keys_file_gets_a_one_line_hint_at_start() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let line = proxy.wait_for_log("keys encrypt");
    assert_eq!(line.matches("keys encrypt").count(), 1, "{line}");
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn a_wrong_or_missing_passphrase_is_a_clear_error_and_changes_nothing() {
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(&file, rich_keys_file().to_string()).unwrap();
    ok(keys_with(dir.path(), PASSPHRASE, &["encrypt"]));
    let sealed = fs::read(&file).unwrap();

    for args in [
        &["add", &key(3)][..],
        &["list"][..],
        &["remove", "work"][..],
        &["disable", "work"][..],
        &["decrypt"][..],
    ] {
        let ran = keys_with(dir.path(), "wrong horse", args);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.all());
        assert!(
            ran.stderr.contains(&format!(
                "keys file '{}' is encrypted and ROO_PROXY_PASSPHRASE does not open it",
                file.display()
            )),
            "{}",
            ran.stderr
        );
        assert!(!ran.all().contains(&key(1)));
    }
    assert_eq!(fs::read(&file).unwrap(), sealed, "the file was changed");

    let (status, _, stderr) = Proxy::bare()
        .in_dir(dir)
        .env("ROO_PROXY_PASSPHRASE", "wrong horse")
        .run();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ROO_PROXY_PASSPHRASE does not open it"),
        "{stderr}"
    );

    // A copy has no keychain entry, and no passphrase is given: every place is named.
    let other = TempDir::new();
    fs::write(other.path().join("keys.json"), &sealed).unwrap();
    let ran = keys_cmd(other.path(), &["list"], "");
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    for needle in [
        "is encrypted and no secret for it was found",
        "ROO_PROXY_PASSPHRASE is not set",
        "has no entry for it",
        "no terminal to ask at",
        "Set ROO_PROXY_PASSPHRASE",
    ] {
        assert!(ran.stderr.contains(needle), "{needle}: {}", ran.stderr);
    }
    let (status, _, stderr) = Proxy::bare().in_dir(other).run();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no secret for it was found"), "{stderr}");
}

/// Runs `command` at a terminal (`script` gives it one) with `typed` as its input; Linux.
fn at_terminal(dir: &Path, command: &str, typed: &str) -> Ran {
    run_in(dir, "script", &["-qec", command, "/dev/null"], typed, &[])
}

/// Whether `keys encrypt` kept the typed passphrase in the kernel keyring (where the
/// keyctl calls are allowed). `ROO_PROXY_REQUIRE_KEYRING=1` (CI) makes its absence fail.
fn keyring_kept(ran: &Ran) -> bool {
    if ran.stdout.contains("kept in the Linux kernel keyring") {
        return true;
    }
    assert!(
        std::env::var("ROO_PROXY_REQUIRE_KEYRING").is_err(),
        "no kernel keyring: {}",
        ran.all()
    );
    eprintln!("skipped: no usable kernel keyring here: {}", ran.all());
    false
}

#[test]
fn a_passphrase_typed_at_encrypt_is_kept_in_the_kernel_keyring() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let mock = Mock::start();
    let builder = Proxy::with(&mock).keys(1);
    let dir = builder_dir(&builder).to_path_buf();
    let typed = format!("{PASSPHRASE}\n{PASSPHRASE}\n");
    let ran = at_terminal(&dir, &format!("'{PROXY}' keys encrypt"), &typed);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(ran.stdout.contains("Type it again"), "{}", ran.stdout);
    if !keyring_kept(&ran) {
        return;
    }
    assert_encrypted(&dir.join("keys.json"));
    let sealed = fs::read(dir.join("keys.json")).unwrap();
    // No ROO_PROXY_PASSPHRASE from here on.
    let listed = ok(keys_cmd(&dir, &["list"], ""));
    assert!(listed.stdout.contains(&masked(1)), "{}", listed.stdout);
    let proxy = builder.start();
    assert_eq!(proxy.chat().status, 200);
    ok(keys_cmd(&dir, &["add", &key(2), "--label", "two"], ""));
    proxy.wait_for_log("keys file changed: 1 added, 0 removed, 2 in the pool");
    eventually("key 2 in use", || {
        assert_eq!(proxy.chat().status, 200);
        mock.keys_used().contains(&bearer(2))
    });

    // Decrypt forgets the entry: the old encrypted file no longer opens by itself.
    ok(keys_cmd(&dir, &["decrypt"], ""));
    assert_eq!(keys_in(&dir.join("keys.json")), [key(1), key(2)]);
    fs::write(dir.join("keys.json"), &sealed).unwrap();
    let ran = keys_cmd(&dir, &["list"], "");
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(
        ran.stderr.contains(&format!(
            "the Linux kernel keyring has no entry for it (a user key 'roo-proxy:{}')",
            dir.join("keys.json").display()
        )),
        "{}",
        ran.stderr
    );
    assert_eq!(fs::read(dir.join("keys.json")).unwrap(), sealed);
}

/// The file is a real age file: the `age` command opens it with the passphrase.
/// `age -d` reads a passphrase only from a terminal, so it runs under `script`.
#[test]
fn the_age_command_decrypts_our_file() {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("age") || !cfg!(target_os = "linux") {
        assert!(
            std::env::var("ROO_PROXY_REQUIRE_AGE").is_err(),
            "the age command is not installed"
        );
        eprintln!("skipped: the age command is not installed");
        return;
    }
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(&file, rich_keys_file().to_string()).unwrap();
    ok(keys_with(dir.path(), PASSPHRASE, &["encrypt"]));
    ok(keys_with(dir.path(), PASSPHRASE, &["add", &key(3)]));
    let out = dir.path().join("out.json");
    let ran = at_terminal(
        dir.path(),
        &format!("age -d -o '{}' '{}'", out.display(), file.display()),
        &format!("{PASSPHRASE}\n"),
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let opened: Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    let keys: Vec<&str> = opened["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [key(1), key(2), key(3)]);
    assert_eq!(opened["comment"], "team keys");
}

#[test]
fn a_malformed_or_damaged_file_is_neither_encrypted_nor_decrypted() {
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    let bad = format!("[\"{}\",\n  oops]", key(1));
    fs::write(&file, &bad).unwrap();
    let ran = keys_with(dir.path(), PASSPHRASE, &["encrypt"]);
    assert_eq!(ran.code, Some(2), "{}", ran.all());
    assert!(
        ran.stderr.contains("is not valid JSON at line 2"),
        "{}",
        ran.stderr
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), bad);

    fs::write(&file, rich_keys_file().to_string()).unwrap();
    ok(keys_with(dir.path(), PASSPHRASE, &["encrypt"]));
    let mut damaged = fs::read_to_string(&file).unwrap();
    // Change one base64 character inside the armored payload.
    let at = damaged.len() - 40;
    let swapped = if &damaged[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    damaged.replace_range(at..at + 1, swapped);
    fs::write(&file, &damaged).unwrap();
    for args in [&["decrypt"][..], &["list"][..], &["add", &key(3)][..]] {
        let ran = keys_with(dir.path(), PASSPHRASE, args);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.all());
        assert!(
            ran.stderr
                .contains("is encrypted and it is not a readable age file"),
            "{}",
            ran.stderr
        );
    }
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        damaged,
        "the file was changed"
    );
}

#[test]
fn encrypt_makes_a_missing_file_an_encrypted_empty_one() {
    let dir = TempDir::new();
    let file = dir.path().join("new").join("keys.json");
    let path = file.to_string_lossy().into_owned();
    ok(keys_with(
        dir.path(),
        PASSPHRASE,
        &["encrypt", "--keys-file", &path],
    ));
    assert_encrypted(&file);
    ok(keys_with(
        dir.path(),
        PASSPHRASE,
        &["add", &key(1), "--keys-file", &path],
    ));
    assert_encrypted(&file);
    assert_no_key_material(&dir.path().join("new"), 1);
    ok(keys_with(
        dir.path(),
        PASSPHRASE,
        &["decrypt", "--keys-file", &path],
    ));
    assert_eq!(keys_in(&file), [key(1)]);
}

/// After a reboot the kernel keyring is empty: the first command at a terminal asks for
/// the passphrase once, and keeps it there for the ones after.
#[test]
fn a_passphrase_typed_when_opening_is_kept_for_the_next_command() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(&file, rich_keys_file().to_string()).unwrap();
    ok(keys_with(dir.path(), PASSPHRASE, &["encrypt"]));
    let before = keys_cmd(dir.path(), &["list"], "");
    assert_eq!(before.code, Some(2), "nothing kept yet: {}", before.all());

    let proxy = format!("'{PROXY}' keys list");
    let wrong = at_terminal(dir.path(), &proxy, "wrong horse\n");
    assert_ne!(wrong.code, Some(0), "{}", wrong.all());
    assert!(
        wrong
            .stdout
            .contains("the passphrase typed does not open it"),
        "{}",
        wrong.stdout
    );
    let typed = at_terminal(dir.path(), &proxy, &format!("{PASSPHRASE}\n"));
    assert_eq!(typed.code, Some(0), "{}", typed.all());
    assert!(typed.stdout.contains("Passphrase for"), "{}", typed.stdout);
    assert!(typed.stdout.contains(&masked(1)), "{}", typed.stdout);

    let after = keys_cmd(dir.path(), &["list"], "");
    if after.code != Some(0) {
        assert!(
            std::env::var("ROO_PROXY_REQUIRE_KEYRING").is_err(),
            "not kept in the kernel keyring: {}",
            after.all()
        );
        return;
    }
    assert!(after.stdout.contains(&masked(2)), "{}", after.stdout);
    ok(keys_cmd(dir.path(), &["decrypt"], ""));
    assert_eq!(keys_in(&file), [key(1), key(2)]);
}

//! The real WordPress setup script, run twice the way the installer runs it (`bash -s` with
//! the secrets ahead of it on stdin), against stand-ins for apt-get, systemctl, php, nginx,
//! mysql and wp-cli that record what they are asked and keep wp-cli's state in files. No
//! container can be made here, so this shows the re-run guards with fakes: the second run
//! downloads nothing again, keeps the database password the site has, and does not install
//! WordPress twice. Secrets never appear in any command's arguments.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pvefleet_installer::WORDPRESS_SETUP;

/// A stand-in that records its name and arguments, one call per line.
const RECORDER: &str = r#"#!/bin/bash
printf '%s %s\n' "$(basename "$0")" "$*" >> "$FAKE_LOG"
case "$(basename "$0")" in
  php) echo 8.2 ;;
  mysql) cat >> "$FAKE_DIR/mysql.stdin" ;;
esac
exit 0
"#;

/// wp-cli: state in the web root, as the real one keeps it there.
const WP: &str = r#"#!/bin/bash
path=
for a in "$@"; do case "$a" in --path=*) path=${a#--path=} ;; esac; done
args=()
for a in "$@"; do case "$a" in --path=* | --allow-root) ;; *) args+=("$a") ;; esac; done
set -- "${args[@]}"
printf 'wp %s\n' "$*" >> "$FAKE_LOG"
case "$1 $2" in
  "core download") mkdir -p "$path/wp-includes"; echo '<?php' > "$path/wp-includes/version.php" ;;
  "config create") read -r pass; printf 'DB_PASSWORD=%s\n' "$pass" > "$path/wp-config.php" ;;
  "config get") sed -n 's/^DB_PASSWORD=//p' "$path/wp-config.php" ;;
  "config set") ;;
  "core is-installed") [ -f "$path/.installed" ] || exit 1 ;;
  "core install") read -r pass; printf '%s\n' "$pass" > "$path/.installed" ;;
  *) echo "wp stand-in: unexpected $*" >&2; exit 2 ;;
esac
"#;

struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new(os: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pvefleet-script-{}", uuid::Uuid::new_v4().simple()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.join("nginx/sites-available")).unwrap();
        std::fs::create_dir_all(dir.join("nginx/sites-enabled")).unwrap();
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("os-release"), os).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for tool in ["apt-get", "systemctl", "php", "nginx", "mysql", "curl", "chown"] {
            let p = bin.join(tool);
            std::fs::write(&p, RECORDER).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let wp = bin.join("wp");
        std::fs::write(&wp, WP).unwrap();
        std::fs::set_permissions(&wp, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    /// Runs the script as the installer does; returns (exit code, stderr).
    fn run(&self, db_password: &str, admin_password: &str) -> (i32, String) {
        let mut stdin =
            format!("export PVEFLEET_DB_PASSWORD='{db_password}'\nexport PVEFLEET_ADMIN_PASSWORD='{admin_password}'\n")
                .into_bytes();
        stdin.extend_from_slice(WORDPRESS_SETUP.as_bytes());
        let path = format!("{}:{}", self.dir.join("bin").display(), std::env::var("PATH").unwrap());
        let mut child = Command::new("bash")
            .args([
                "-s",
                "--",
                "https://blog.sites.test",
                "Blog",
                "alice@sites.test",
                "admin",
            ])
            .env("PATH", path)
            .env("FAKE_LOG", self.dir.join("calls.log"))
            .env("FAKE_DIR", &self.dir)
            .env("PVEFLEET_WEBROOT", self.dir.join("www"))
            .env("PVEFLEET_NGINX_DIR", self.dir.join("nginx"))
            .env("PVEFLEET_OS_RELEASE", self.dir.join("os-release"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(&stdin).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn file(&self, p: &str) -> String {
        std::fs::read_to_string(self.dir.join(p)).unwrap_or_default()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn count(calls: &[String], prefix: &str) -> usize {
    calls.iter().filter(|c| c.starts_with(prefix)).count()
}

const DEBIAN: &str = "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn the_setup_script_run_twice_installs_once_and_keeps_the_first_database_password() {
    assert!(
        is_root(),
        "the script checks for root, as it runs in the container; run the tests as root"
    );
    let fake = Fake::new(DEBIAN);
    let (code, stderr) = fake.run("FirstDbPass1", "AdminPass1");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(fake.file("www/.installed").trim(), "AdminPass1");
    assert!(fake.file("www/wp-config.php").contains("DB_PASSWORD=FirstDbPass1"));
    assert!(
        fake.file("nginx/sites-available/wordpress")
            .contains("fastcgi_pass unix:/run/php/php8.2-fpm.sock")
    );
    assert!(Path::new(&fake.dir.join("nginx/sites-enabled/wordpress")).exists());
    // Again, as a redelivered install would, with other passwords on stdin.
    let (code, stderr) = fake.run("SecondDbPass2", "AdminPass2");
    assert_eq!(code, 0, "{stderr}");
    let calls = fake.calls();
    assert_eq!(count(&calls, "wp core download"), 1, "{calls:#?}");
    assert_eq!(count(&calls, "wp config create"), 1, "{calls:#?}");
    assert_eq!(count(&calls, "wp core install"), 1, "{calls:#?}");
    assert_eq!(
        count(&calls, "wp config get DB_PASSWORD"),
        1,
        "the re-run read the password back"
    );
    let sql = fake.file("mysql.stdin");
    assert_eq!(
        sql.matches("IDENTIFIED BY 'FirstDbPass1'").count(),
        4,
        "both runs set the first password: {sql}"
    );
    assert!(!sql.contains("SecondDbPass2"), "the re-run keeps the site's password");
    assert_eq!(fake.file("www/.installed").trim(), "AdminPass1", "not installed twice");
    for secret in ["FirstDbPass1", "SecondDbPass2", "AdminPass1", "AdminPass2"] {
        assert!(
            !calls.iter().any(|c| c.contains(secret)),
            "{secret} appeared in a command line: {calls:#?}"
        );
    }
}

#[test]
fn the_setup_script_fails_fast_with_a_clear_message() {
    assert!(is_root(), "run the tests as root");
    let fake = Fake::new("ID=centos\nVERSION_ID=\"9\"\nPRETTY_NAME=\"CentOS Stream 9\"\n");
    let (code, stderr) = fake.run("x", "y");
    assert_eq!(code, 1);
    assert!(stderr.contains("unsupported template CentOS Stream 9"), "{stderr}");
    assert!(fake.calls().is_empty(), "nothing was installed");
    // Missing secrets: refused before anything runs.
    let fake = Fake::new(DEBIAN);
    let (code, stderr) = fake.run("", "y");
    assert_eq!(code, 1);
    assert!(stderr.contains("PVEFLEET_DB_PASSWORD is not set"), "{stderr}");
}

//! Start-up configuration: a wrong value stops verve with one line naming the flag.

use std::process::Command;

fn verve(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_verve"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_wrong_value_stops_start_up_with_one_line_naming_the_flag() {
    for (args, env, flag) in [
        (vec!["--window-secs", "0"], vec![], "--window-secs"),
        (vec!["--window-secs", "soon"], vec![], "--window-secs"),
        (vec!["--driver", "kqueue"], vec![], "--driver"),
        (vec!["--listen", "nowhere"], vec![], "--listen"),
        (
            vec!["--callback-method", "put"],
            vec![],
            "--callback-method",
        ),
        (vec![], vec![("VERVE_WORKERS", "0")], "--workers"),
        (
            vec![],
            vec![("VERVE_REPORT_GRACE_MS", "-1")],
            "--report-grace-ms",
        ),
        (vec!["--no-such-flag"], vec![], "--no-such-flag"),
    ] {
        let (code, _, stderr) = verve(&args, &env);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
}

#[test]
fn an_unwritable_stats_log_is_named() {
    let (code, _, stderr) = verve(&["--stats-log", "/nonexistent/dir/stats.log"], &[]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--stats-log"), "{stderr}");
}

#[test]
fn help_shows_flags_and_their_environment_variables() {
    let (code, stdout, _) = verve(&["--help"], &[]);
    assert_eq!(code, 0);
    for s in [
        "--window-secs",
        "VERVE_WINDOW_SECS",
        "--callback-allow-private",
        "VERVE_DRIVER",
    ] {
        assert!(stdout.contains(s), "{s} missing from --help");
    }
}

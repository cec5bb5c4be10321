//! The Debian package: its files, its control data and its maintainer scripts, read with
//! dpkg-deb from the package `scripts/test.sh` builds with cargo-deb (`VERVE_DEB`).

use std::process::Command;

fn deb() -> String {
    std::env::var("VERVE_DEB").expect("VERVE_DEB: build the package with scripts/test.sh")
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_package_holds_the_binary_unit_defaults_and_logrotate() {
    let listing = dpkg_deb(&["--contents", &deb()]);
    for (path, mode) in [
        ("./usr/bin/verve", "-rwxr-xr-x"),
        ("./lib/systemd/system/verve.service", "-rw-r--r--"),
        ("./etc/default/verve", "-rw-r--r--"),
        ("./etc/logrotate.d/verve", "-rw-r--r--"),
        ("./usr/share/doc/verve/README.md", "-rw-r--r--"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(path))
            .unwrap_or_else(|| panic!("{path} missing from:\n{listing}"));
        assert!(line.starts_with(mode), "{line}");
    }
    let control = dpkg_deb(&["--field", &deb()]);
    assert!(control.contains("Package: verve"), "{control}");
    assert!(
        control.contains("Depends:") && control.contains("libc6"),
        "{control}"
    );
    let dir = tempfile::tempdir().unwrap();
    dpkg_deb(&["--control", &deb(), dir.path().to_str().unwrap()]);
    let postinst = std::fs::read_to_string(dir.path().join("postinst")).unwrap();
    assert!(
        postinst.contains("systemctl enable verve.service"),
        "{postinst}"
    );
    let conffiles = std::fs::read_to_string(dir.path().join("conffiles")).unwrap();
    assert!(conffiles.contains("/etc/default/verve"), "{conffiles}");
}

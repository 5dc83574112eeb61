//! A node whose disk fills up, as a user would meet it: a real `hydromesh node` process with its
//! data dir on a small filesystem of its own (a tmpfs this test mounts; root only), filled to
//! the last byte while the node ingests, then freed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{wait_for, Running};

const BIN: &str = env!("CARGO_BIN_EXE_hydromesh");
/// Readings of the first ingest: as many as the store's write-ahead part holds before the
/// next batch folds it into chunks (200,000), so that the fold meets the full disk too.
const FIRST: u64 = 200_000;

/// A filesystem mounted for the test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: &Path, size: &str) -> Mount {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "cannot mount a tmpfs at {}", path.display());
        Mount(path.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn start_node(data: &Path) -> (Running, String) {
    let _ = std::fs::remove_file(data.join("addrs"));
    let child = Command::new(BIN)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--http", "off", "--mqtt", "off", "--data-dir"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    let running = Running(child);
    let addrs = data.join("addrs");
    let addr = wait_for("the node's addrs file", Duration::from_secs(30), || {
        std::fs::read_to_string(&addrs).ok()?.lines().next().map(str::to_owned)
    });
    (running, addr)
}

fn hydromesh(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("hydromesh runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A CSV of `count` readings of meters `first_meter..first_meter + 100`, a second apart each.
fn csv(path: &Path, first_meter: u64, count: u64, start_ms: u64) {
    let mut body = String::from("meter,ts,litres\n");
    for i in 0..count {
        let (meter, step) = (first_meter + i % 100, i / 100);
        body.push_str(&format!("{meter},{},{}\n", start_ms + step * 1000, 10 + step * 3));
    }
    std::fs::write(path, body).expect("write csv");
}

/// Fills the filesystem of `path` to the last byte.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![0xA5u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    // The last partial block, a byte at a time.
    while file.write_all(&[0xA5]).is_ok() {}
    let _ = file.sync_all();
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|out| text(&out.stdout).trim() == "0").unwrap_or(false)
}

#[test]
fn a_full_disk_is_a_storage_failure_and_ingest_resumes_by_itself_once_space_is_free() {
    if !is_root() {
        eprintln!("SKIPPED: mounting the small filesystem this test fills needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = Mount::tmpfs(&dir.path().join("disk"), "48m");
    let data = disk.0.join("data");
    let (first, second) = (dir.path().join("first.csv"), dir.path().join("second.csv"));
    let start_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
            - 3 * 86_400_000;
    csv(&first, 1_000, FIRST, start_ms);
    // Later readings of other meters: 2,000 of them, tens of KB of log, so they need new pages.
    csv(&second, 5_000, 2_000, start_ms);

    let (node, addr) = start_node(&data);
    let out = hydromesh(&["ingest", "--peer", &addr, "--timeout", "60s", first.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "first ingest: {}{}", text(&out.stdout), text(&out.stderr));

    let filler = disk.0.join("filler");
    fill(&filler);
    let out = hydromesh(&["ingest", "--peer", &addr, "--timeout", "60s", second.to_str().expect("path")]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "a full disk is a storage failure (exit 2): {said}");
    assert!(said.contains("not stored"), "{said}");
    assert!(said.contains("rejected 0"), "a full disk is never reported as bad data: {said}");
    // The node still answers.
    let stats = hydromesh(&["query", "--peer", &addr, "--json", "stats"]);
    assert_eq!(stats.status.code(), Some(0), "stats on a full disk: {}", text(&stats.stderr));

    std::fs::remove_file(&filler).expect("free the disk");
    let resumed = wait_for("ingest to resume by itself", Duration::from_secs(30), || {
        let out = hydromesh(&["ingest", "--peer", &addr, "--timeout", "60s", second.to_str().expect("path")]);
        (out.status.code() == Some(0)).then_some(out)
    });
    let said = format!("{}{}", text(&resumed.stdout), text(&resumed.stderr));
    assert!(said.contains("accepted 2000"), "{said}");

    // Everything acknowledged is there after a kill -9 and a restart.
    drop(node);
    let (_node, addr) = start_node(&data);
    let stats = hydromesh(&["query", "--peer", &addr, "--json", "stats"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    assert_eq!(stats["meters"], 200, "{stats}");
    // Registers step by 3 L a reading: consumption = 3 × (readings − 1).
    for (meter, readings) in [(1_000, FIRST / 100), (1_099, FIRST / 100), (5_000, 20), (5_099, 20)] {
        let out = hydromesh(&["query", "--peer", &addr, "--json", "meter", &meter.to_string()]);
        assert_eq!(out.status.code(), Some(0), "meter {meter}: {}", text(&out.stderr));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(answer["consumption_l"], 3 * (readings - 1), "meter {meter} after the restart: {answer}");
    }
}

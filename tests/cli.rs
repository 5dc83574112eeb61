//! The real `hydromesh` binary, as a user runs it: a node process on loopback, `ingest` and
//! `query` processes against it, and bytes no peer should send.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{now_ms, wait_for, Running};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hydromesh");

/// A `hydromesh node` process, killed on drop.
struct NodeProcess {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    fn start() -> NodeProcess {
        NodeProcess::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> NodeProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(BIN)
            .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--name", "cli-test"])
            .args(["--http", "127.0.0.1:0", "--mqtt", "off", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts");
        let addrs = dir.path().join("data").join("addrs");
        let addr = wait_for("the node's addrs file", Duration::from_secs(20), || {
            std::fs::read_to_string(&addrs).ok()?.lines().next().map(str::to_owned)
        });
        NodeProcess { child, addr, _dir: dir }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hydromesh(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("hydromesh runs")
}

fn hydromesh_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hydromesh runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("hydromesh ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write file");
    path
}

#[test]
fn ingest_reports_each_rejected_line_and_keeps_the_rest() {
    let node = NodeProcess::start();
    let files = tempfile::tempdir().expect("tempdir");
    let t = now_ms() - 86_400_000;
    let good = write(
        files.path(),
        "good.csv",
        &format!("meter,ts,litres\n1,{t},100\n1,{},150\n2,2026-01-01T00:00:00Z,7\n", t + 60_000),
    );
    let path = good.to_str().expect("path");
    let first = hydromesh(&["ingest", "--peer", &node.addr, path]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert_eq!(text(&first.stdout).trim(), "accepted 3, duplicates 0, rejected 0");
    let again = hydromesh(&["ingest", "--peer", &node.addr, path]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(text(&again.stdout).trim(), "accepted 0, duplicates 3, rejected 0");

    let future = now_ms() + 3_600_000;
    let bad = write(
        files.path(),
        "bad.csv",
        &format!(
            "meter,ts,litres\n\
             1,{},160\n\
             1,{},140\n\
             x.1,{t},5\n\
             1,{t},101\n\
             3,{future},9\n\
             1,{t},100\n\
             4,{t},12.5\n",
            t + 120_000,
            t + 180_000
        ),
    );
    let out = hydromesh(&["ingest", "--peer", &node.addr, "--json", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["accepted"], 1);
    assert_eq!(report["duplicates"], 1);
    let rejected: Vec<(u64, String)> = report["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| (r["line"].as_u64().expect("line"), r["error"].as_str().expect("error").to_owned()))
        .collect();
    let lines: Vec<u64> = rejected.iter().map(|(line, _)| *line).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 8]);
    assert!(rejected[0].1.contains("register decreased"), "{rejected:?}");
    assert!(rejected[1].1.contains("meter"), "{rejected:?}");
    assert!(rejected[2].1.contains("conflicting duplicate"), "{rejected:?}");
    assert!(rejected[3].1.contains("timestamp in the future"), "{rejected:?}");
    assert!(rejected[4].1.contains("litres"), "{rejected:?}");

    let human = hydromesh(&["ingest", "--peer", &node.addr, bad.to_str().expect("path")]);
    assert_eq!(human.status.code(), Some(1));
    assert!(text(&human.stderr).contains("line 5: conflicting duplicate"), "{}", text(&human.stderr));

    // JSON lines on stdin; the stored readings are what `query meter` shows.
    let jsonl = format!("{{\"meter\":9,\"ts\":{t},\"litres\":5}}\n\n{{\"meter\":9,\"ts\":{},\"litres\":8,\"alarms\":[\"leak\"]}}\n", t + 1000);
    let out = hydromesh_with_stdin(&["ingest", "--peer", &node.addr, "--format", "jsonl", "-"], &jsonl);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = hydromesh(&["query", "meter", "9", "--peer", &node.addr, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let meter: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(meter["consumption_l"], 3);
    assert_eq!(meter["readings"][1]["alarms"][0], "leak");

    // A file that is not there, and a header that is wrong: usage errors.
    let missing = hydromesh(&["ingest", "--peer", &node.addr, "/nonexistent/readings.csv"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/readings.csv"));
    let header = write(files.path(), "header.csv", "meter,when,litres\n1,2,3\n");
    let out = hydromesh(&["ingest", "--peer", &node.addr, header.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("line 1"), "{}", text(&out.stderr));
}

#[test]
fn query_answers_with_tables_and_json_flags_anywhere() {
    let node = NodeProcess::start();
    let t = now_ms() - 3_600_000;
    // Meter 0014a807 as wmbusmeters prints it, given in upper case.
    let csv = format!(
        "meter,ts,litres\n5,{t},1000\n5,{},3500\n0014A807,{t},10\n0014A807,{},20\n",
        t + 1000,
        t + 1000
    );
    let out = hydromesh_with_stdin(&["ingest", "--peer", &node.addr, "-"], &csv);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stats: Value =
        wait_for("the node's own summary to count both meters", Duration::from_secs(10), || {
            let out = hydromesh(&["query", "--json", "stats", "--peer", &node.addr]);
            let stats: Value = serde_json::from_slice(&out.stdout).ok()?;
            (stats["meters"] == 2).then_some(stats)
        });
    assert_eq!(stats["total_consumption_l"], 2510);
    assert_eq!(stats["average_consumption_l"], 1255.0);
    assert_eq!(stats["nodes"], 1);
    assert_eq!(stats["stale_nodes"], 0);

    let top = hydromesh(&["query", "--peer", &node.addr, "top", "--n", "1", "--json"]);
    let top: Value = serde_json::from_slice(&top.stdout).expect("JSON");
    assert_eq!(top["entries"].as_array().expect("entries").len(), 1);
    assert_eq!(top["entries"][0]["meter"], "5");
    assert_eq!(top["entries"][0]["consumption_l"], 2500);

    let human = hydromesh(&["query", "top", "--peer", &node.addr]);
    let human = text(&human.stdout);
    assert!(human.contains("2.500"), "{human}");
    assert!(human.contains("1 fog node, 0 stale"), "{human}");
    // Homes by name, as the dashboard shows them, not by 52-character peer id.
    assert!(human.contains("cli-test") && !human.contains("12D3KooW"), "{human}");
    // HOST:PORT for the node's TCP port, and --since as a time as well as a duration.
    let port = node.addr.split('/').nth(4).expect("port");
    let two_hours_ago = hydromesh_proto::format_rfc3339(now_ms() - 7_200_000);
    let since =
        hydromesh(&["query", "--peer", &format!("127.0.0.1:{port}"), "top", "--since", &two_hours_ago]);
    assert_eq!(since.status.code(), Some(0), "{}", text(&since.stderr));
    assert!(text(&since.stdout).contains("2.500"), "{}", text(&since.stdout));
    let future =
        hydromesh(&["query", "--peer", &node.addr, "top", "--since", "2999-01-01T00:00:00Z", "--json"]);
    assert_eq!(future.status.code(), Some(0), "{}", text(&future.stderr));
    let future: Value = serde_json::from_slice(&future.stdout).expect("JSON");
    assert_eq!(future["entries"], serde_json::json!([]), "a window not started ranks nothing");
    let bad = hydromesh(&["query", "--peer", "localhost", "stats"]);
    assert!(text(&bad.stderr).contains("HOST:PORT"), "{}", text(&bad.stderr));

    // A closed pipe (`| head`) ends the command quietly.
    let closed = Command::new(BIN)
        .args(["query", "--peer", &node.addr, "peers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("query runs");
    let Child { stdout, stderr, .. } = closed;
    drop(stdout);
    let mut said = String::new();
    std::io::Read::read_to_string(&mut stderr.expect("stderr"), &mut said).expect("stderr");
    assert!(!said.contains("panicked") && !said.contains("Broken pipe"), "{said}");
    let peers = hydromesh(&["query", "peers", "--peer", &node.addr]);
    assert!(text(&peers.stdout).contains("cli-test"), "{}", text(&peers.stdout));

    let unknown = hydromesh(&["query", "meter", "77", "--peer", &node.addr]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("meter 77"));
    // Printed ids: either case asks for the same meter, which is shown as wmbusmeters prints it;
    // without its leading zeros it is another meter; a character outside ids is refused.
    let printed = hydromesh(&["query", "meter", "0014A807", "--json", "--peer", &node.addr]);
    let printed: Value = serde_json::from_slice(&printed.stdout).expect("JSON");
    assert_eq!(
        (&printed["meter"], &printed["consumption_l"]),
        (&serde_json::json!("0014a807"), &serde_json::json!(10))
    );
    let table = hydromesh(&["query", "top", "--peer", &node.addr]);
    assert!(text(&table.stdout).contains("0014a807"), "{}", text(&table.stdout));
    let unpadded = hydromesh(&["query", "meter", "14a807", "--peer", &node.addr]);
    assert_eq!(unpadded.status.code(), Some(1), "{}", text(&unpadded.stderr));
    let bad = hydromesh(&["query", "meter", "14/807", "--peer", &node.addr]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("letters, digits, `-` and `_` only"), "{}", text(&bad.stderr));

    // `query meter` shows the latest 20 readings; --all shows them all.
    let t = now_ms() - 7_200_000;
    let mut csv = String::from("meter,ts,litres\n");
    for i in 0..30 {
        csv.push_str(&format!("9,{},{}\n", t + i * 60_000, 100 + i));
    }
    let out = hydromesh_with_stdin(&["ingest", "--peer", &node.addr, "-"], &csv);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows = |args: &[&str]| {
        let out = hydromesh(&[&["query", "--peer", &node.addr, "meter", "9"], args].concat());
        let said = text(&out.stdout);
        (said.lines().filter(|line| line.starts_with("20") && line.contains(" 0.1")).count(), said)
    };
    let (latest, said) = rows(&[]);
    assert_eq!(latest, 20, "{said}");
    assert!(said.contains("over 30 reading(s)") && said.contains("--all"), "{said}");
    assert!(said.contains("0.129") && !said.contains("0.100 "), "the latest ones: {said}");
    let (all, said) = rows(&["--all"]);
    assert_eq!(all, 30, "{said}");
}

#[test]
fn a_second_node_on_a_taken_port_or_data_dir_refuses_to_start() {
    let first = NodeProcess::start();
    let port = first.addr.split('/').nth(4).expect("port").to_owned();
    let second = |listen: &str, data: &Path| {
        Command::new(BIN)
            .args(["node", "--listen", listen, "--http", "off", "--mqtt", "off", "--data-dir"])
            .arg(data)
            .output()
            .expect("node runs")
    };
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let out = second(&format!("/ip4/127.0.0.1/tcp/{port}"), elsewhere.path());
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out.stderr);
    assert!(said.contains(&format!("cannot listen on /ip4/127.0.0.1/tcp/{port}")), "{said}");
    assert!(said.contains("the port is in use"), "{said}");
    let out = second("/ip4/127.0.0.1/tcp/0", &first._dir.path().join("data"));
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out.stderr);
    assert_eq!(said.matches("another hydromesh node is using").count(), 1, "said once: {said}");
    assert!(said.contains("--data-dir"), "{said}");
    // The first node is untouched.
    let out = hydromesh(&["query", "--peer", &first.addr, "stats"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_private_mesh_answers_only_clients_with_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ours, theirs) = (dir.path().join("swarm.key"), dir.path().join("other.key"));
    let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let out = hydromesh(&["keygen", "--swarm-key", &path(&ours)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--swarm-key"), "says how to use it: {}", text(&out.stderr));
    let written = std::fs::read_to_string(&ours).expect("key file");
    assert!(written.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"), "{written}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ours).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = hydromesh(&["keygen", "--swarm-key", &path(&ours)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read_to_string(&ours).expect("key file"), written, "never overwritten");
    assert_eq!(hydromesh(&["keygen", "--swarm-key", &path(&theirs)]).status.code(), Some(0));

    let node = NodeProcess::start_with(&["--swarm-key", &path(&ours)]);
    let out = hydromesh(&["query", "--peer", &node.addr, "--swarm-key", &path(&ours), "stats"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for refused in [vec![], vec!["--swarm-key".to_owned(), path(&theirs)]] {
        let mut args = vec!["query", "--peer", &node.addr, "--timeout", "3s", "stats"];
        args.extend(refused.iter().map(String::as_str));
        let out = hydromesh(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?} {}", text(&out.stdout));
        let said = text(&out.stderr);
        assert!(said.contains("cannot connect to") && said.contains("swarm key"), "{args:?}: {said}");
    }

    // QUIC cannot be protected by the key: refused, with the reason.
    let quic = Command::new(BIN)
        .args(["node", "--swarm-key", &path(&ours), "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .args(["--http", "off", "--mqtt", "off", "--data-dir"])
        .arg(dir.path().join("quic"))
        .output()
        .expect("node runs");
    assert_eq!(quic.status.code(), Some(2));
    assert!(text(&quic.stderr).contains("TCP only"), "{}", text(&quic.stderr));
    let damaged = write(dir.path(), "damaged.key", "not a key\n");
    let out = hydromesh(&["query", "--peer", &node.addr, "--swarm-key", &path(&damaged), "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("damaged.key"), "{}", text(&out.stderr));
}

#[test]
fn simulate_says_what_it_does() {
    let node = NodeProcess::start();
    let out = hydromesh(&[
        "simulate",
        "--peer",
        &node.addr,
        "--meters",
        "3",
        "--interval",
        "200ms",
        "--duration",
        "1s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("simulating 3 meters"), "{said}");
    assert!(
        said.lines().last().is_some_and(|line| line.starts_with("done: ") && line.contains("readings sent")),
        "{said}"
    );
    assert!(!said.contains("INFO") && !text(&out.stderr).contains("INFO"), "no log lines: {said}");
}

#[test]
fn a_dead_address_is_a_clear_error_with_exit_2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let started = Instant::now();
    let out = hydromesh(&["query", "--peer", &format!("/ip4/127.0.0.1/tcp/{port}"), "stats"]);
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out.stderr);
    assert!(said.contains("cannot connect to /ip4/127.0.0.1/tcp/"), "{said}");
    assert!(said.contains("connection refused: no node listens there"), "{said}");
    assert_eq!(said.trim_end().lines().count(), 1, "one line: {said}");
    assert!(started.elapsed() < Duration::from_secs(30), "gave up within the dial timeout");
    let out = hydromesh(&["query", "stats"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--peer"));
    let out = hydromesh(&["query", "--bogus", "stats"]);
    assert_eq!(out.status.code(), Some(2));
    let out = hydromesh(&["ingest", "--peer", "not-an-address", "x.csv"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn garbage_and_oversized_bytes_leave_the_node_serving() {
    use std::net::TcpStream;
    let node = NodeProcess::start();
    let port: u16 =
        node.addr.split('/').nth(4).and_then(|p| p.parse().ok()).expect("tcp port in the address");
    let mut state = 0x9E37_79B9_u64;
    let garbage: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    for payload in [
        garbage.clone(),
        [b"\x13/multistream/1.0.0\n".as_slice(), &garbage].concat(),
        vec![0xff; 8 * 1024 * 1024],
    ] {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
            // The node may close the connection before taking everything: that is the point.
            let _ = stream.write_all(&payload);
        }
    }
    let out = hydromesh(&["query", "--peer", &node.addr, "stats", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn sigterm_stops_the_node_cleanly_and_acknowledged_readings_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let start = |data: &Path| {
        Command::new(BIN)
            .args([
                "node",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--http",
                "off",
                "--mqtt",
                "off",
                "--data-dir",
            ])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts")
    };
    let addr_of = |data: &Path| {
        let file = data.join("addrs");
        wait_for("the addrs file", Duration::from_secs(20), || {
            std::fs::read_to_string(&file).ok()?.lines().next().map(str::to_owned)
        })
    };
    let mut child = start(&data);
    let addr = addr_of(&data);
    let t = now_ms() - 60_000;
    let out =
        hydromesh_with_stdin(&["ingest", "--peer", &addr, "-"], &format!("meter,ts,litres\n42,{t},7\n"));
    assert_eq!(out.status.code(), Some(0));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = wait_for("the node to exit", Duration::from_secs(20), || child.try_wait().expect("wait"));
    assert_eq!(exit.code(), Some(0));

    std::fs::remove_file(data.join("addrs")).expect("remove old addrs");
    let mut again = start(&data);
    let addr = addr_of(&data);
    let out = hydromesh(&["query", "--peer", &addr, "meter", "42", "--json"]);
    let _ = again.kill();
    let _ = again.wait();
    let meter: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(meter["readings"][0]["litres"], 7);
}

#[test]
fn admin_commands_are_signed_checked_and_enforced() {
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("admin.key");
    let key_path = key.to_str().expect("path");
    let out = hydromesh(&["keygen", "--out", key_path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let public = text(&out.stdout).trim().to_owned();
    assert_eq!(public.len(), 64, "{public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = hydromesh(&["keygen", "--out", key_path]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already exists"));

    let node = NodeProcess::start_with(&["--admin-pubkey", &public]);
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--peer", node.addr.as_str()];
        all.extend_from_slice(args);
        hydromesh(&all)
    };
    let out = admin(&["--key", key_path, "policy", "--cap-l", "100"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let policy = |admin: &dyn Fn(&[&str]) -> Output| -> Value {
        serde_json::from_slice(&admin(&["policy", "--json"]).stdout).expect("policy JSON")
    };
    assert_eq!(policy(&admin)["cap_l"], 100);

    // Absurd values, bad key files, missing keys: usage errors, nothing applied.
    for (args, message) in [
        (vec!["--key", key_path, "policy", "--above-average", "0.5"], "between 1 and 1000"),
        (vec!["--key", key_path, "policy", "--period", "10s"], "period must be between"),
        (vec!["--key", key_path, "policy", "--cap-l", "-5"], "-5"),
        (vec!["block", "1"], "--key"),
    ] {
        let out = admin(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(message), "{args:?}: {}", text(&out.stderr));
    }
    let garbage = write(keys.path(), "garbage.key", "not a key\n");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let loose = write(keys.path(), "loose.key", &std::fs::read_to_string(&key).expect("key"));
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = admin(&["--key", loose.to_str().expect("path"), "block", "1"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("readable by others"), "{}", text(&out.stderr));
    }
    let out = admin(&["--key", garbage.to_str().expect("path"), "block", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not an admin key"), "{}", text(&out.stderr));
    assert_eq!(policy(&admin)["cap_l"], 100, "nothing applied");

    // Another admin's key: refused by the node, with the reason.
    let stranger = keys.path().join("stranger.key");
    assert_eq!(hydromesh(&["keygen", "--out", stranger.to_str().expect("path")]).status.code(), Some(0));
    let out = admin(&["--key", stranger.to_str().expect("path"), "policy", "--cap-l", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not trust"), "{}", text(&out.stderr));
    let out = admin(&["--key", key_path, "block", "404"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("meter 404 is unknown"), "{}", text(&out.stderr));

    // A reading over the cap: the acknowledgement closes the valve, and the mesh lists it.
    let t = now_ms() - 60_000;
    let csv = format!("meter,ts,litres\n3,{t},1000\n3,{},1101\n", t + 1000);
    let out = hydromesh_with_stdin(&["ingest", "--peer", &node.addr, "--json", "-"], &csv);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["commands"], serde_json::json!([{"meter": "3", "valve": "closed"}]));
    let blocked = wait_for("the block in the node's summary", Duration::from_secs(10), || {
        let out = hydromesh(&["query", "blocked", "--json", "--peer", &node.addr]);
        let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
        (answer["blocked"].as_array()?.len() == 1).then_some(answer)
    });
    assert_eq!(blocked["blocked"][0]["meter"], "3");
    assert_eq!(blocked["blocked"][0]["reason"], "cap");
    let detail = blocked["blocked"][0]["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("0.101 m³ in the period, cap 0.100 m³"), "volumes in m³: {detail}");
    let out = admin(&["--key", key_path, "block", "3", "--reason", "inspection"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bill = hydromesh(&["query", "bill", "3", "--json", "--peer", &node.addr]);
    let bill: Value = serde_json::from_slice(&bill.stdout).expect("bill JSON");
    assert_eq!(bill["consumption_l"], 101);
    assert_eq!(bill["currency"], "BRL");
    assert_eq!(bill["amount"], 0.45);
    assert_eq!(bill["paid"], false);
}

#[test]
fn configuration_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(
        dir.path(),
        "node.toml",
        "name = \"from-file\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"127.0.0.1:0\"\nmqtt = \"off\"\n",
    );
    let name_of = |env: Option<&str>, flag: Option<&str>, data: &str| -> String {
        let data = dir.path().join(data);
        let mut command = Command::new(BIN);
        command.args(["node", "--config"]).arg(&config).arg("--data-dir").arg(&data);
        if let Some(name) = flag {
            command.args(["--name", name]);
        }
        if let Some(name) = env {
            command.env("HYDROMESH_NAME", name);
        }
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("node starts");
        // Killed on drop, even when an assertion below fails.
        let _node = Running(child);
        let addrs = data.join("addrs");
        let addr = wait_for("the addrs file", Duration::from_secs(20), || {
            std::fs::read_to_string(&addrs).ok()?.lines().next().map(str::to_owned)
        });
        wait_for("the http file (the file's address)", Duration::from_secs(20), || {
            data.join("http").exists().then_some(())
        });
        assert!(!data.join("mqtt").exists(), "the file turned MQTT off");
        let out = hydromesh(&["query", "peers", "--json", "--peer", &addr]);
        let peers: Value = serde_json::from_slice(&out.stdout).expect("peers JSON");
        peers["peers"][0]["name"].as_str().expect("name").to_owned()
    };
    assert_eq!(name_of(None, None, "a"), "from-file");
    assert_eq!(name_of(Some("from-env"), None, "b"), "from-env");
    assert_eq!(name_of(Some("from-env"), Some("from-flag"), "c"), "from-flag");

    let bad = write(dir.path(), "bad.toml", "name = \"x\"\nrepublsh_interval = \"1s\"\n");
    let out = hydromesh(&["node", "--config", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("republsh_interval"), "{}", text(&out.stderr));

    // A raw retention shorter than the alert rules look back is refused, saying why.
    let data = dir.path().join("short");
    let out = hydromesh(&["node", "--retain-raw", "12h", "--data-dir", data.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let said = text(&out.stderr);
    assert!(said.contains("retain_raw must be at least 2days"), "{said}");
}

/// Anonymous noise on the QUIC port (datagrams shaped like Initial packets, with garbage in
/// them) is counted in `/metrics` and writes at most 10 log lines a minute, however fast it
/// comes.
#[test]
fn noise_on_the_quic_port_is_counted_and_its_log_lines_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("node.log");
    let child = Command::new(BIN)
        .args(["node", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--http", "127.0.0.1:0", "--mqtt", "off", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("node starts");
    let node = Running(child);
    let quic = wait_for("the QUIC address", Duration::from_secs(20), || {
        let addrs = std::fs::read_to_string(data.join("addrs")).ok()?;
        let line = addrs.lines().find(|line| line.contains("/quic-v1"))?.to_owned();
        line.split('/').nth(4)?.parse::<u16>().ok()
    });
    let http = wait_for("the HTTP address", Duration::from_secs(20), || {
        std::fs::read_to_string(data.join("http")).ok().filter(|addr| !addr.trim().is_empty())
    });
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let metric = |name: &str| -> u64 {
        let metrics = http_get(http.trim(), "/metrics");
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let refused = "hydromesh_refused_total{source=\"p2p\",reason=\"listener_error\"}";
    let suppressed = "hydromesh_log_lines_suppressed_total{reason=\"listener_error\"}";
    wait_for("noise counted beyond the log's allowance", Duration::from_secs(60), || {
        for _ in 0..500 {
            // A long-header Initial of QUIC v1 with random ids and payload.
            let mut packet = vec![0xc3, 0, 0, 0, 1, 8];
            packet.extend((0..8).map(|_| next(&mut seed)));
            packet.push(8);
            packet.extend((0..1200).map(|_| next(&mut seed)));
            let _ = socket.send_to(&packet, ("127.0.0.1", quic));
        }
        (metric(suppressed) > 0).then_some(())
    });
    let noise = metric(refused);
    eprintln!("{noise} listener errors counted");
    assert!(noise > 10, "{noise}");
    drop(node);
    let written = std::fs::read_to_string(&log).expect("log");
    let lines = written.lines().filter(|line| line.contains("listener error")).count();
    assert!((1..=10).contains(&lines), "{lines} listener error lines:\n{written}");
}

/// The next byte of a xorshift sequence.
fn next(state: &mut u64) -> u8 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 24) as u8
}

/// The body of a plain HTTP/1.0 GET.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

//! Power loss: whatever a cut does to sled, the node comes back from the
//! message log with every durable line, and its feed goes on unforked.
//!
//! A real cut (LazyFS, which drops every write not yet fsynced) leaves
//! sled's blob files empty, its db file cut short, or nothing at all; these
//! tests do the same damage by hand, so they need no special filesystem.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use scuttlefs::feed::{Keypair, Message};
use scuttlefs::node::Node;

use common::node_config as config;

fn index_dir(path: &Path) -> PathBuf {
    config(path).store_dir().join("index")
}

/// A node with `n` durable lines of its own (some long enough to be split
/// across messages) and a replicated feed; returns the lines' texts.
fn durable_node(path: &Path, n: usize) -> Vec<String> {
    let node = Node::open(config(path), Keypair::from_seed(&[1; 32]), true).expect("opens");
    let other = Keypair::from_seed(&[2; 32]);
    let mut theirs: Vec<Message> = Vec::new();
    let mut their_texts = Vec::new();
    for i in 0..300 {
        let tip = theirs.last().map(Message::tip);
        let text = format!("replicated {i}");
        their_texts.push(text.clone());
        theirs.push(
            Message::sign(
                &other,
                tip.as_ref(),
                1e12 + f64::from(i),
                json!({"type": "log", "text": text}),
            )
            .expect("signs"),
        );
    }
    let mut texts = Vec::new();
    // The two feeds' lines interleave in the line file, in several runs.
    for batch in 0..4 {
        let contents: Vec<Value> = (0..n / 4)
            .map(|i| {
                let text = if i % 50 == 7 {
                    format!("long {batch} {i} {}", "x".repeat(20_000))
                } else {
                    format!("line {batch} {i}")
                };
                texts.push(text.clone());
                json!({"type": "log", "text": text})
            })
            .collect();
        node.publish(contents).expect("publishes");
        let part = batch * 75..(batch + 1) * 75;
        texts.extend_from_slice(&their_texts[part.clone()]);
        node.ingest(theirs[part].to_vec()).expect("ingests");
    }
    // As the daemon does every second.
    node.store.sync_positions().expect("syncs positions");
    node.flush().expect("flushes");
    texts
}

/// Opens the node after damage and checks it: every durable line shows in
/// merged.log, and its feed goes on with a message that chains onto the
/// last one it kept.
fn assert_comes_back(path: &Path, durable: &[String]) {
    let keys = Keypair::from_seed(&[1; 32]);
    let node = Node::open(config(path), keys.clone(), true).expect("the node comes back");
    let views = node.views().expect("views");
    let merged = common::merged_text(views);
    let shown: std::collections::HashSet<&str> = merged
        .lines()
        .map(|l| l.splitn(3, ' ').nth(2).expect("timestamp label text"))
        .collect();
    for text in durable {
        assert!(
            shown.contains(text.as_str()),
            "missing after recovery: {:.60}",
            text
        );
    }
    let before = node.store.tip(&keys.id()).expect("own feed kept");
    node.publish(vec![json!({"type": "log", "text": "after the cut"})])
        .expect("publishes after recovery");
    let after = node
        .store
        .get(&keys.id(), before.sequence + 1)
        .expect("reads")
        .expect("stored");
    assert_eq!(after.previous, Some(before.key), "chains onto the kept tip");
    common::assert_feed_verifies(&node.store, &keys.id());
}

fn sled_files(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![index_dir(path)];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("lists") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn sled_writes_no_blob_files_even_for_long_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    durable_node(dir.path(), 2000);
    let blobs: Vec<PathBuf> = sled_files(dir.path())
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "blobs"))
        .collect();
    assert!(blobs.is_empty(), "sled wrote blob files: {blobs:?}");
}

#[test]
fn the_whole_index_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = durable_node(dir.path(), 800);
    fs::remove_dir_all(index_dir(dir.path())).expect("removes");
    assert_comes_back(dir.path(), &durable);
}

#[test]
fn the_index_db_file_cut_at_random_offsets() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..6 {
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = durable_node(dir.path(), 800);
        let db = index_dir(dir.path()).join("db");
        let len = fs::metadata(&db).expect("db").len();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let cut = match round {
            0 => 0,
            1 => 7,
            _ => seed % len,
        };
        OpenOptions::new()
            .write(true)
            .open(&db)
            .expect("opens db")
            .set_len(cut)
            .expect("cuts");
        assert_comes_back(dir.path(), &durable);
    }
}

#[test]
fn the_index_db_file_overwritten_with_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = durable_node(dir.path(), 800);
    let db = index_dir(dir.path()).join("db");
    let mut bytes = fs::read(&db).expect("reads db");
    let mut x = 88172645463325252u64;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x as usize) % bytes.len();
        let end = (at + 512).min(bytes.len());
        for b in &mut bytes[at..end] {
            *b = (x >> 8) as u8;
        }
    }
    fs::write(&db, bytes).expect("writes db");
    // Whether sled refuses this or quietly drops the damaged part, the
    // node comes back whole.
    assert_comes_back(dir.path(), &durable);
}

#[test]
fn blob_files_left_empty() {
    // Current stores write no blobs; one from before (or any value over
    // sled's blob size) must still not keep the node down when power loss
    // empties it.
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = durable_node(dir.path(), 400);
    {
        let db = open_index_db(dir.path());
        let tree = db.open_tree("messages").expect("tree");
        let mut key = vec![b'n'];
        key.extend_from_slice(&[3; 32]);
        tree.insert(key, vec![b'a'; 300 * 1024]).expect("inserts");
        db.flush().expect("flushes");
    }
    let blobs: Vec<PathBuf> = sled_files(dir.path())
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "blobs"))
        .collect();
    assert!(!blobs.is_empty(), "the setup made a blob");
    for blob in blobs {
        OpenOptions::new()
            .write(true)
            .open(&blob)
            .expect("opens blob")
            .set_len(0)
            .expect("empties");
    }
    // sled's recovery drops the entry whose blob is empty, and the store
    // re-indexes from the log what the index then lacks.
    assert_comes_back(dir.path(), &durable);
}

/// The damaged indexes set aside in the store at `path`.
fn set_aside(path: &Path) -> Vec<String> {
    fs::read_dir(config(path).store_dir())
        .expect("lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("index.damaged-"))
        .collect()
}

#[test]
fn an_index_sled_refuses_to_open_is_set_aside_and_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = durable_node(dir.path(), 400);
    fs::write(
        index_dir(dir.path()).join("conf"),
        b"segment_size: many\n\0\0",
    )
    .expect("writes");
    assert_comes_back(dir.path(), &durable);
    assert_eq!(set_aside(dir.path()).len(), 1, "kept for diagnosis");
}

#[test]
fn the_log_cut_past_its_last_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = durable_node(dir.path(), 400);
    let log = config(dir.path()).store_dir().join("messages.log");
    let synced = fs::metadata(&log).expect("log").len();
    {
        // Lines written after the last sync, then power lost: the log keeps
        // a part of them, cut inside a record; sled may have kept more.
        let node =
            Node::open(config(dir.path()), Keypair::from_seed(&[1; 32]), true).expect("opens");
        let contents: Vec<Value> = (0..50)
            .map(|i| json!({"type": "log", "text": format!("unsynced {i}")}))
            .collect();
        node.publish(contents).expect("publishes");
        node.store.flush().expect("flushes sled too");
    }
    let len = fs::metadata(&log).expect("log").len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .expect("opens log")
        .set_len(synced + (len - synced) / 2 + 3)
        .expect("cuts");
    assert_comes_back(dir.path(), &durable);
}

#[test]
fn the_daemon_comes_back_with_every_line_after_sigkill_and_a_cut_index() {
    if !common::fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let mut daemon = common::Daemon::start(&path, "cut", &[]);
    let wrote = daemon.sh(
        "for i in $(seq 1 300); do echo \"durable line $i\"; done >> publish && \
         printf 'long %s\\n' \"$(head -c 30000 /dev/zero | tr '\\0' y)\" >> publish",
    );
    assert!(wrote.status.success(), "{wrote:?}");
    // Power is cut: no clean stop, then sled's db loses its second half.
    let mut child = daemon.child.take().expect("running");
    child.kill().expect("kills");
    child.wait().expect("waits");
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&daemon.mount)
        .output();
    let db = index_dir(&path).join("db");
    let len = fs::metadata(&db).expect("db").len();
    OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("opens db")
        .set_len(len / 2)
        .expect("cuts");
    drop(daemon);

    let daemon = common::Daemon::start(&path, "cut", &[]);
    let cat = std::process::Command::new("cat")
        .arg(daemon.file("merged.log"))
        .output()
        .expect("cat runs");
    assert!(cat.status.success());
    let merged = String::from_utf8(cat.stdout).expect("utf8");
    for i in 1..=300 {
        let line = format!(" durable line {i}\n");
        assert!(merged.contains(&line), "line {i} lost:\n{}", daemon.log());
    }
    assert!(merged.contains(&format!(" long {}\n", "y".repeat(30000))));
    let wrote = daemon.sh("echo 'after the cut' >> publish");
    assert!(wrote.status.success(), "{wrote:?}");
    let merged = fs::read_to_string(daemon.file("merged.log")).expect("reads merged.log");
    assert!(merged.ends_with(" after the cut\n"), "{merged:.200}");
}

#[test]
fn lines_acknowledged_to_three_concurrent_writers_survive_sigkill() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    if !common::fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let mut daemon = common::Daemon::start(&path, "writers", &[]);
    let (acks, acked) = mpsc::channel::<(usize, u64)>();
    let mut writers = Vec::new();
    for w in 0..3 {
        // Each line is acknowledged once the `>>` that wrote it is closed.
        let script = format!(
            "i=0; while :; do i=$((i+1)); echo \"writer {w} line $i\" >> publish || exit 0; echo \"acked $i\"; done"
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(&daemon.mount)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("writer starts");
        let stdout = child.stdout.take().expect("stdout");
        let acks = acks.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("acked ") {
                    let _ = acks.send((w, n.parse().expect("number")));
                }
            }
        });
        writers.push(child);
    }
    drop(acks);
    let mut last = [0u64; 3];
    while last.iter().any(|n| *n < 150) {
        let (w, n) = acked
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("writers keep writing");
        last[w] = n;
    }
    let mut child = daemon.child.take().expect("running");
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    for writer in &mut writers {
        let _ = writer.kill();
        let _ = writer.wait();
    }
    // Acknowledgements printed before the kill, and still in the pipe.
    while let Ok((w, n)) = acked.recv_timeout(std::time::Duration::from_secs(2)) {
        last[w] = last[w].max(n);
    }
    let _ = Command::new("umount").arg("-l").arg(&daemon.mount).output();
    drop(daemon);

    let daemon = common::Daemon::start(&path, "writers", &[]);
    let merged = fs::read_to_string(daemon.file("merged.log")).expect("reads merged.log");
    for (w, n) in last.iter().enumerate() {
        for i in 1..=*n {
            let line = format!(" writer {w} line {i}\n");
            assert!(merged.contains(&line), "acknowledged line lost: {line:?}");
        }
    }
    let id = daemon.id();
    drop(daemon);
    let node = Node::open(config(&path), load_keys(&path), false).expect("opens");
    assert_eq!(node.id().to_string(), id);
    common::assert_feed_verifies(&node.store, &node.id());
}

/// The key pair of the daemon at `path`.
fn load_keys(path: &Path) -> Keypair {
    let text = fs::read_to_string(path.join("secret")).expect("reads the secret");
    Keypair::from_secret_file_text(&text).expect("parses the secret")
}

/// Opens the closed store's index database directly. sled's threads of
/// the node just dropped may hold its lock for a moment.
fn open_index_db(path: &Path) -> sled::Db {
    for _ in 0..100 {
        let opened = sled::Config::new()
            .path(index_dir(path))
            .flush_every_ms(None)
            .open();
        match opened {
            Ok(db) => return db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    panic!("the index database stays locked");
}

#[test]
fn a_views_checkpoint_the_files_do_not_bear_out_is_thrown_away() {
    // Lines would vanish from merged.log, or show twice.
    let damages: [(&str, Damage); 6] = [
        ("the line file cut short", |line_file| {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(line_file)
                .expect("opens");
            let len = file.metadata().expect("stat").len();
            file.set_len(len / 2).expect("cuts");
        }),
        ("the checkpoint garbled", |line_file| {
            fs::write(checkpoint_of(line_file), b"{\"version\":1,\"log_").expect("writes");
        }),
        ("the checkpoint ahead of the store", |line_file| {
            let path = checkpoint_of(line_file);
            let mut saved: Value =
                serde_json::from_slice(&fs::read(&path).expect("reads")).expect("json");
            saved["log_end"] = json!(saved["log_end"].as_u64().expect("log_end") + 4096);
            fs::write(path, serde_json::to_vec(&saved).expect("json")).expect("writes");
        }),
        ("the merged file lost", |line_file| {
            for entry in fs::read_dir(line_file.parent().expect("dir")).expect("lists") {
                let path = entry.expect("entry").path();
                if path.to_string_lossy().contains(".sorted-")
                    || path.to_string_lossy().contains(".keys-")
                {
                    fs::remove_file(path).expect("removes");
                }
            }
        }),
        ("the runs files lost", |line_file| {
            fs::remove_dir_all(runs_of(line_file)).expect("removes");
        }),
        ("a runs file cut short", |line_file| {
            for entry in fs::read_dir(runs_of(line_file)).expect("lists") {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(entry.expect("entry").path())
                    .expect("opens");
                file.set_len(0).expect("cuts");
            }
        }),
    ];
    for (damage, apply) in damages {
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = durable_node(dir.path(), 400);
        // A start that leaves a checkpoint of everything.
        drop(Node::open(config(dir.path()), Keypair::from_seed(&[1; 32]), true).expect("opens"));
        apply(&config(dir.path()).line_file());
        {
            let node = Node::open(config(dir.path()), Keypair::from_seed(&[1; 32]), true)
                .unwrap_or_else(|e| panic!("{damage}: {e}"));
            let views = node.views().expect("views");
            let merged = common::merged_text(views);
            assert_eq!(
                merged.lines().count(),
                durable.len(),
                "{damage}: each line once"
            );
            let feeds = [node.id(), Keypair::from_seed(&[2; 32]).id()];
            let per_feed: usize = feeds
                .iter()
                .map(|feed| {
                    let log = views
                        .read_feed_log(feed, 0, views.feed_log_len(feed) as usize)
                        .unwrap_or_else(|e| panic!("{damage}: reads {feed}'s log: {e}"));
                    log.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()
                })
                .sum();
            assert_eq!(
                per_feed,
                durable.len(),
                "{damage}: the machines' logs hold each line once"
            );
        }
        assert_comes_back(dir.path(), &durable);
        assert!(
            set_aside(dir.path()).is_empty(),
            "{damage}: the store's index was sound"
        );
    }
}

/// Something a power cut can do to the views' files at a line file.
type Damage = fn(&Path);

/// Where the views at `line_file` keep their runs files.
fn runs_of(line_file: &Path) -> PathBuf {
    scuttlefs::view::beside(line_file, ".runs")
}

/// Where the views at `line_file` keep their checkpoint.
fn checkpoint_of(line_file: &Path) -> PathBuf {
    scuttlefs::view::beside(line_file, ".state")
}

/// The position files of the store at `path`, largest first.
fn position_files(path: &Path) -> Vec<PathBuf> {
    let dir = config(path).store_dir().join("positions");
    let mut files: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .expect("lists positions")
        .map(|e| {
            let e = e.expect("entry");
            (e.metadata().expect("stat").len(), e.path())
        })
        .collect();
    files.sort();
    files.reverse();
    files.into_iter().map(|(_, path)| path).collect()
}

fn cut_to(file: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(file)
        .expect("opens")
        .set_len(len)
        .expect("cuts");
}

#[test]
fn synced_positions_lost_are_noticed_and_rebuilt() {
    // A feed's history would end early.
    for damage in ["cut", "removed"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let durable = durable_node(dir.path(), 800);
        let files = position_files(dir.path());
        assert_eq!(files.len(), 2, "one per feed");
        match damage {
            "cut" => cut_to(&files[0], 12 * 100),
            _ => fs::remove_file(&files[1]).expect("removes"),
        }
        assert_comes_back(dir.path(), &durable);
        assert_eq!(
            set_aside(dir.path()).len(),
            1,
            "{damage}: kept for diagnosis"
        );
    }
}

#[test]
fn positions_lost_since_their_last_sync_are_written_again_without_a_rebuild() {
    // Power loss after sled recorded the batches but before the position
    // files were synced: sled still says they were synced up to some
    // earlier point (here, not at all).
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = durable_node(dir.path(), 800);
    {
        let db = open_index_db(dir.path());
        let tree = db.open_tree("messages").expect("tree");
        tree.remove(b"P").expect("removes");
        db.flush().expect("flushes");
    }
    for file in position_files(dir.path()) {
        let len = fs::metadata(&file).expect("stat").len();
        cut_to(&file, len / 2);
        // And a blank entry where a write never landed.
        let mut bytes = fs::read(&file).expect("reads");
        let blank = bytes.len() / 24 * 12;
        bytes[blank..blank + 12].fill(0);
        fs::write(&file, &bytes).expect("writes");
    }
    assert_comes_back(dir.path(), &durable);
    assert!(set_aside(dir.path()).is_empty(), "no rebuild");
}

#[test]
fn lines_indexed_again_after_a_cut_keep_the_machine_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keypair::from_seed(&[1; 32]);
    {
        let node = Node::open(config(dir.path()), keys.clone(), true).expect("opens");
        node.ensure_name("nas").expect("names itself");
        node.publish(vec![json!({"type": "log", "text": "early"})])
            .expect("publishes");
        node.flush().expect("flushes");
    }
    let older = dir.path().join("older-index");
    copy_dir(&index_dir(dir.path()), &older);
    {
        let node = Node::open(config(dir.path()), keys.clone(), true).expect("opens");
        node.publish(vec![json!({"type": "log", "text": "late"})])
            .expect("publishes");
        node.flush().expect("flushes");
    }
    // Power loss kept the log but an older index: the late line is
    // indexed again from the log, past what the index covers.
    fs::remove_dir_all(index_dir(dir.path())).expect("removes");
    fs::rename(&older, index_dir(dir.path())).expect("restores");
    let node = Node::open(config(dir.path()), keys, true).expect("comes back");
    let views = node.views().expect("views");
    let merged = common::merged_text(views);
    assert_eq!(merged.lines().count(), 2, "{merged}");
    assert!(merged.lines().all(|l| l.contains(" nas ")), "{merged}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("lists") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copies");
        }
    }
}

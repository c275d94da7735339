use std::time::Duration;

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rec {
    seq: u64,
    payload: String,
    check: u64,
}

impl Record for Rec {
    const KIND: &'static str = "rec";
    const VERSION: u32 = 1;
}

fn checksum(seq: u64, payload: &str) -> u64 {
    payload
        .bytes()
        .fold(seq.wrapping_mul(0x9E37_79B9_7F4A_7C15), |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
        })
}

fn rec(seq: u64, size: usize) -> Rec {
    let payload: String = (0..size)
        .map(|i| char::from(b'a' + ((seq as usize + i) % 26) as u8))
        .collect();
    Rec {
        seq,
        check: checksum(seq, &payload),
        payload,
    }
}

#[test]
fn put_get_remove_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    c.put("a", rec(1, 10)).unwrap();
    c.put("b", rec(2, 10)).unwrap();
    c.put("a", rec(3, 10)).unwrap();
    c.remove("b").unwrap();
    c.remove("never-existed").unwrap();
    drop(c);
    let (c, report) = Collection::<Rec>::open(dir.path()).unwrap();
    assert!(report.corrupt.is_empty());
    assert_eq!(c.list().len(), 1);
    assert_eq!(c.get("a").unwrap().seq, 3);
    let text = std::fs::read_to_string(dir.path().join("rec/a.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["kind"], "rec");
    assert_eq!(v["id"], "a");
}

#[test]
fn ids_that_escape_the_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    for bad in ["", "../x", "a/b", ".hidden", "x\0y"] {
        assert!(
            matches!(c.put(bad, rec(1, 1)), Err(StoreError::BadId(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn memory_is_unchanged_when_the_disk_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    c.put("a", rec(1, 10)).unwrap();
    std::fs::remove_dir_all(dir.path().join("rec")).unwrap();
    assert!(c.put("a", rec(2, 10)).is_err());
    assert!(c.put("b", rec(3, 10)).is_err());
    assert_eq!(c.get("a").unwrap().seq, 1);
    assert!(c.get("b").is_none());
}

#[test]
fn leftover_temp_files_are_removed_and_corrupt_records_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    c.put("good", rec(1, 10)).unwrap();
    drop(c);
    let kind_dir = dir.path().join("rec");
    std::fs::write(kind_dir.join(".tmp-1-0-good.json"), "{\"version\":1,\"ki").unwrap();
    std::fs::write(kind_dir.join("torn.json"), "{\"version\":1,\"ki").unwrap();
    std::fs::write(
        kind_dir.join("future.json"),
        r#"{"version":99,"kind":"rec","id":"future","data":{}}"#,
    )
    .unwrap();
    let (c, report) = Collection::<Rec>::open(dir.path()).unwrap();
    assert_eq!(report.removed_temp_files, 1);
    assert_eq!(report.corrupt.len(), 2, "{:?}", report.corrupt);
    assert_eq!(c.list().len(), 1);
    assert!(!kind_dir.join(".tmp-1-0-good.json").exists());
}

/// Child side of `a_crash_in_the_middle_of_writes_never_leaves_a_torn_record`: writes big records
/// in a loop until killed. Does nothing unless started by that test.
#[test]
#[ignore = "run as a child process by the crash test"]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os("CRIUS_STORE_CRASH_DIR") else {
        return;
    };
    let (c, _) = Collection::<Rec>::open(Path::new(&dir)).unwrap();
    let mut seq = 0u64;
    loop {
        seq += 1;
        c.put(&format!("r{}", seq % 3), rec(seq, 512 * 1024))
            .unwrap();
        if seq == 3 {
            // Tell the parent that every id has a complete record.
            std::fs::write(Path::new(&dir).join("ready"), b"").unwrap();
        }
    }
}

#[test]
fn a_crash_in_the_middle_of_writes_never_leaves_a_torn_record() {
    let exe = std::env::current_exe().unwrap();
    for round in 0..6u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(&exe)
            .args([
                "--exact",
                "store::tests::crash_writer_child",
                "--ignored",
                "--nocapture",
            ])
            .env("CRIUS_STORE_CRASH_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !dir.path().join("ready").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "child never became ready"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        // Kill at a different point of the write loop each round.
        std::thread::sleep(Duration::from_millis(3 + round * 7));
        child.kill().unwrap(); // SIGKILL: no destructor, no flush.
        child.wait().unwrap();

        let (c, report) = Collection::<Rec>::open(dir.path()).unwrap();
        assert!(
            report.corrupt.is_empty(),
            "torn record: {:?}",
            report.corrupt
        );
        let records = c.list();
        assert_eq!(records.len(), 3, "every id keeps a complete record");
        for (id, r) in records {
            assert_eq!(r.check, checksum(r.seq, &r.payload), "record {id} is torn");
            assert_eq!(r.payload.len(), 512 * 1024);
        }
    }
}

#[test]
fn concurrent_read_modify_writes_of_one_record_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    c.put("a", rec(0, 4)).unwrap();
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for _ in 0..8 {
            let (c, published) = (&c, published.clone());
            s.spawn(move || {
                for _ in 0..25 {
                    let out = c
                        .modify::<StoreError>(
                            "a",
                            |cur| Ok(Some(rec(cur.seq + 1, 4))),
                            |stored| published.lock().unwrap().push(stored.seq),
                        )
                        .unwrap();
                    assert!(matches!(out, Modified::Changed(_)));
                }
            });
        }
    });
    assert_eq!(c.get("a").unwrap().seq, 200);
    // `then` ran in write order: every sequence number once, ascending.
    assert_eq!(*published.lock().unwrap(), (1..=200).collect::<Vec<_>>());
    let unchanged = c
        .modify::<StoreError>("a", |_| Ok(None), |_| panic!("nothing was written"))
        .unwrap();
    assert!(matches!(unchanged, Modified::Unchanged(r) if r.seq == 200));
    let missing = c
        .modify::<StoreError>("zz", |_| Ok(Some(rec(1, 1))), |_| {})
        .unwrap();
    assert!(matches!(missing, Modified::Missing));
    assert!(c.get("zz").is_none());
    drop(c);
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    assert_eq!(c.get("a").unwrap().seq, 200);
}

#[test]
fn remove_many_removes_from_disk_and_memory_and_tolerates_missing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    for id in ["a", "b", "c"] {
        c.put(id, rec(1, 4)).unwrap();
    }
    c.remove_many(&["c", "a", "never-existed", "a"]).unwrap();
    let ids: Vec<String> = c.list().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["b"]);
    assert!(!dir.path().join("rec/a.json").exists());
    assert!(!dir.path().join("rec/c.json").exists());
    assert!(c.remove_many(&["../x"]).is_err(), "ids stay confined");
    drop(c);
    let (c, _) = Collection::<Rec>::open(dir.path()).unwrap();
    assert_eq!(c.list().len(), 1);
    assert!(c.get("b").is_some());
}

//! Layers are built in memory header by header (see [`Layer`]) so that the malicious cases the
//! tar crate's `Builder` refuses (`..`, planted symlinks, escaping hardlinks) can be written too.
//! Every malicious test asserts both the error and that nothing changed outside `dest`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;

const MTIME: u64 = 1_600_000_000;

/// A tar stream written header by header.
#[derive(Default)]
struct Layer {
    bytes: Vec<u8>,
}

impl Layer {
    fn entry(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        data: &[u8],
        configure: impl FnOnce(&mut tar::Header),
    ) -> &mut Self {
        let mut header = tar::Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        configure(&mut header);
        header.set_cksum();
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    fn pad(&mut self) {
        let rem = self.bytes.len() % 512;
        if rem != 0 {
            self.bytes.resize(self.bytes.len() + 512 - rem, 0);
        }
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name.as_bytes(), tar::EntryType::Regular, b"", data, |_| {})
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name.as_bytes(), tar::EntryType::Directory, b"", b"", |_| {})
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            tar::EntryType::Symlink,
            target.as_bytes(),
            b"",
            |_| {},
        )
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            tar::EntryType::Link,
            target.as_bytes(),
            b"",
            |_| {},
        )
    }

    /// A PAX extended header for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let base = key.len() + value.len() + 3; // ' ', '=', '\n'
            let mut len = base + 1;
            while base + len.to_string().len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.entry(b"PaxHeader", tar::EntryType::XHeader, b"", &data, |_| {})
    }

    /// The archive with its two zero end blocks.
    fn finish(&self) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        bytes.resize(bytes.len() + 1024, 0);
        bytes
    }
}

/// A destination layer dir and an "outside" sibling that must never change.
struct Fixture {
    _tmp: tempfile::TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("layer");
        let outside = tmp.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        Fixture {
            _tmp: tmp,
            dest,
            outside,
        }
    }

    fn unpack(&self, tar: &[u8]) -> Result<Unpacked, UnpackError> {
        unpack_layer(tar, Compression::None, &self.dest)
    }

    fn outside_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn assert_outside_empty(&self) {
        assert_eq!(
            self.outside_names(),
            Vec::<String>::new(),
            "something was written outside dest"
        );
    }
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn assert_unsafe(result: Result<Unpacked, UnpackError>, entry: &str) {
    match &result {
        Err(err @ UnpackError::Unsafe { entry: e, reason }) if e == entry => {
            assert!(!reason.is_empty());
            assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
        }
        other => panic!("expected an unsafe-entry error for {entry:?}, got {other:?}"),
    }
}

fn mtime(path: &Path) -> i64 {
    fs::symlink_metadata(path).unwrap().mtime()
}

#[test]
fn unpacks_files_dirs_links_and_nodes() {
    let fixture = Fixture::new();
    let tar = Layer::default()
        .entry(b"./", tar::EntryType::Directory, b"", b"", |h| {
            h.set_mode(0o755)
        })
        .entry(b"./etc/", tar::EntryType::Directory, b"", b"", |h| {
            h.set_mode(0o750);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_mtime(MTIME + 7);
        })
        .entry(
            b"./etc/passwd",
            tar::EntryType::Regular,
            b"",
            b"root:x:0:0\n",
            |h| {
                h.set_mode(0o4755);
                h.set_uid(1000);
                h.set_gid(1000);
                h.set_mtime(MTIME + 1);
            },
        )
        .entry(b"./tmp/", tar::EntryType::Directory, b"", b"", |h| {
            h.set_mode(0o1777)
        })
        .symlink("./etc/link", "../../outside/x")
        .hardlink("./etc/hard", "./etc/passwd")
        .entry(b"./run/fifo", tar::EntryType::Fifo, b"", b"", |h| {
            h.set_mode(0o600)
        })
        .entry(b"./dev/null", tar::EntryType::Char, b"", b"", |h| {
            h.set_mode(0o666);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        })
        .finish();

    let unpacked = fixture.unpack(&tar).unwrap();
    assert_eq!(
        unpacked,
        Unpacked {
            diff_id: sha256(&tar),
            size: tar.len() as u64,
            entries: 8
        }
    );

    let d = &fixture.dest;
    let etc = fs::symlink_metadata(d.join("etc")).unwrap();
    assert!(etc.is_dir());
    assert_eq!(
        (etc.mode() & 0o7777, etc.uid(), etc.gid()),
        (0o750, 1000, 1000)
    );
    assert_eq!(
        etc.mtime(),
        MTIME as i64 + 7,
        "directory mtime is set after its contents"
    );

    let passwd = fs::symlink_metadata(d.join("etc/passwd")).unwrap();
    assert_eq!(fs::read(d.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    assert_eq!(
        (passwd.mode() & 0o7777, passwd.uid(), passwd.gid()),
        (0o4755, 1000, 1000)
    );
    assert_eq!(passwd.mtime(), MTIME as i64 + 1);

    assert_eq!(
        fs::symlink_metadata(d.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::read_link(d.join("etc/link")).unwrap(),
        Path::new("../../outside/x")
    );
    assert_eq!(mtime(&d.join("etc/link")), MTIME as i64);

    let hard = fs::symlink_metadata(d.join("etc/hard")).unwrap();
    assert_eq!(hard.ino(), passwd.ino());
    assert_eq!(hard.nlink(), 2);

    let fifo = fs::symlink_metadata(d.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o600);
    assert_eq!(
        fs::symlink_metadata(d.join("run")).unwrap().mode() & 0o7777,
        0o755,
        "implicit parent"
    );

    let null = fs::symlink_metadata(d.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    fixture.assert_outside_empty();
}

#[test]
fn leading_dot_is_relative_to_dest_and_absolute_paths_are_refused() {
    let fixture = Fixture::new();
    let tar = Layer::default().file("./dot/x", b"b").finish();
    fixture.unpack(&tar).unwrap();
    assert_eq!(fs::read(fixture.dest.join("dot/x")).unwrap(), b"b");

    let fixture = Fixture::new();
    let outside_file = format!("{}/pwned", fixture.outside.display());
    let tar = Layer::default().file(&outside_file, b"c").finish();
    assert_unsafe(fixture.unpack(&tar), &outside_file);
    let tar = Layer::default().file("/abs", b"a").finish();
    assert_unsafe(fixture.unpack(&tar), "/abs");
    fixture.assert_outside_empty();
}

#[test]
fn later_entries_replace_earlier_ones() {
    let fixture = Fixture::new();
    let tar = Layer::default()
        .file("a", b"first")
        .symlink("a", "target")
        .dir("d/")
        .file("d/inner", b"x")
        .file("d", b"now a file")
        .symlink("s", "elsewhere")
        .file("s", b"file over link")
        .dir("e/")
        .entry(b"e/", tar::EntryType::Directory, b"", b"", |h| {
            h.set_mode(0o700)
        })
        .finish();
    fixture.unpack(&tar).unwrap();
    let d = &fixture.dest;
    assert_eq!(fs::read_link(d.join("a")).unwrap(), Path::new("target"));
    assert_eq!(fs::read(d.join("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(d.join("s")).unwrap(), b"file over link");
    assert_eq!(
        fs::metadata(d.join("e")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
}

#[test]
fn file_over_a_symlink_to_outside_replaces_the_link_not_the_target() {
    let fixture = Fixture::new();
    let secret = fixture.outside.join("secret");
    fs::write(&secret, b"original").unwrap();
    let tar = Layer::default()
        .symlink("evil", secret.to_str().unwrap())
        .file("evil", b"pwned")
        .symlink("evildir", fixture.outside.to_str().unwrap())
        .entry(b"evildir/", tar::EntryType::Directory, b"", b"", |h| {
            h.set_mode(0o700)
        })
        .finish();
    fixture.unpack(&tar).unwrap();
    assert_eq!(fs::read(&secret).unwrap(), b"original");
    assert_eq!(fs::read(fixture.dest.join("evil")).unwrap(), b"pwned");
    assert!(fs::symlink_metadata(fixture.dest.join("evildir"))
        .unwrap()
        .is_dir());
    assert_eq!(
        fs::metadata(&fixture.outside).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(fixture.outside_names(), vec!["secret"]);
}

#[test]
fn long_names_and_link_targets_use_gnu_and_pax_extensions() {
    let fixture = Fixture::new();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_size(4);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, &long_file, &b"long"[..])
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder
        .append_link(&mut header, "longlink", &long_file)
        .unwrap();
    let mut tar = builder.into_inner().unwrap();
    // A PAX path record overrides the header name.
    let pax_name = format!("pax/{}", "p".repeat(110));
    tar.truncate(tar.len() - 1024);
    let mut layer = Layer { bytes: tar };
    layer
        .pax(&[("path", pax_name.as_bytes())])
        .file("ignored-name", b"pax");
    fixture.unpack(&layer.finish()).unwrap();
    assert_eq!(fs::read(fixture.dest.join(&long_file)).unwrap(), b"long");
    assert_eq!(
        fs::read_link(fixture.dest.join("longlink")).unwrap(),
        Path::new(&long_file)
    );
    assert_eq!(fs::read(fixture.dest.join(&pax_name)).unwrap(), b"pax");
    assert!(!fixture.dest.join("ignored-name").exists());
}

#[test]
fn pax_mtime_uid_gid_and_xattrs_apply() {
    let fixture = Fixture::new();
    let tar = Layer::default()
        .pax(&[
            ("mtime", b"1700000000.25"),
            ("uid", b"3000000"),
            ("gid", b"3000001"),
            ("SCHILY.xattr.user.foo", b"bar"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ])
        .file("f", b"x")
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.dir", b"1"),
        ])
        .dir("d/")
        .finish();
    fixture.unpack(&tar).unwrap();
    let f = fixture.dest.join("f");
    let meta = fs::symlink_metadata(&f).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_700_000_000, 250_000_000)
    );
    assert_eq!((meta.uid(), meta.gid()), (3_000_000, 3_000_001));
    assert_eq!(
        lgetxattr(&f, "trusted.overlay.opaque"),
        None,
        "overlay xattrs from the layer are dropped"
    );
    assert_eq!(
        lgetxattr(&fixture.dest.join("d"), "trusted.overlay.opaque"),
        None
    );

    // user.* xattrs need filesystem support (tmpfs before 6.6 has none): assert when supported.
    let probe = fixture.outside.join("probe");
    fs::write(&probe, b"").unwrap();
    let supported =
        rustix::fs::lsetxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    fs::remove_file(&probe).unwrap();
    if supported {
        assert_eq!(lgetxattr(&f, "user.foo").as_deref(), Some(&b"bar"[..]));
        assert_eq!(
            lgetxattr(&fixture.dest.join("d"), "user.dir").as_deref(),
            Some(&b"1"[..])
        );
    } else {
        eprintln!("user xattrs unsupported on the temp dir's filesystem: xattr assertions skipped");
    }
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    let fixture = Fixture::new();
    let tar = Layer::default()
        .dir("etc/")
        .file("etc/.wh.gone", b"")
        .file("newdir/.wh.nested", b"")
        .dir("var/")
        .file("var/kept", b"k")
        .file("var/.wh..wh..opq", b"")
        .file(".wh..wh..opq", b"")
        .file("x/.wh..wh.plnk", b"")
        .finish();
    let unpacked = fixture.unpack(&tar).unwrap();
    assert_eq!(unpacked.entries, 8);
    let d = &fixture.dest;
    for path in ["etc/gone", "newdir/nested"] {
        let meta = fs::symlink_metadata(d.join(path)).unwrap();
        assert!(meta.file_type().is_char_device(), "{path}");
        assert_eq!(meta.rdev(), 0, "{path}");
    }
    assert!(fs::symlink_metadata(d.join("etc/.wh.gone")).is_err());
    assert!(fs::symlink_metadata(d.join("var/.wh..wh..opq")).is_err());
    assert!(fs::symlink_metadata(d.join("x/.wh..wh.plnk")).is_err());
    assert_eq!(
        lgetxattr(&d.join("var"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        lgetxattr(d, "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(fs::read(d.join("var/kept")).unwrap(), b"k");
    assert_eq!(lgetxattr(&d.join("etc"), "trusted.overlay.opaque"), None);
}

/// The image spec: a whiteout only hides lower layers; an entry of the same layer stays.
#[test]
fn whiteout_keeps_entries_of_the_same_layer() {
    let fixture = Fixture::new();
    let tar = Layer::default()
        .file("f", b"same layer")
        .file(".wh.f", b"")
        .dir("d/")
        .file("d/x", b"x")
        .file(".wh.d", b"")
        .file(".wh.later", b"")
        .dir("later/")
        .finish();
    fixture.unpack(&tar).unwrap();
    let d = &fixture.dest;
    assert_eq!(fs::read(d.join("f")).unwrap(), b"same layer");
    assert_eq!(fs::read(d.join("d/x")).unwrap(), b"x");
    assert_eq!(
        lgetxattr(&d.join("d"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(fs::symlink_metadata(d.join("later")).unwrap().is_dir());
    assert_eq!(
        lgetxattr(&d.join("later"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
}

fn small_layer() -> Vec<u8> {
    Layer::default()
        .dir("z/")
        .file("z/hello", b"hello zstd\n")
        .symlink("z/link", "hello")
        .finish()
}

fn assert_small_layer(dest: &Path, unpacked: &Unpacked) {
    let tar = small_layer();
    assert_eq!(unpacked.diff_id, sha256(&tar));
    assert_eq!(unpacked.size, tar.len() as u64);
    assert_eq!(unpacked.entries, 3);
    assert_eq!(fs::read(dest.join("z/hello")).unwrap(), b"hello zstd\n");
    assert_eq!(
        fs::read_link(dest.join("z/link")).unwrap(),
        Path::new("hello")
    );
}

#[test]
fn gzip_layers_unpack_including_multi_member_streams() {
    let tar = small_layer();
    let fixture = Fixture::new();
    let unpacked = unpack_layer(&gzip(&tar)[..], Compression::Gzip, &fixture.dest).unwrap();
    assert_small_layer(&fixture.dest, &unpacked);

    let (head, tail) = tar.split_at(700);
    let mut members = gzip(head);
    members.extend(gzip(tail));
    let fixture = Fixture::new();
    let unpacked = unpack_layer(&members[..], Compression::Gzip, &fixture.dest).unwrap();
    assert_small_layer(&fixture.dest, &unpacked);
}

/// `small_layer()` split at byte 1536, each half compressed into its own frame (with checksum):
/// `zstd -19 -c half1 > a.zst; zstd -19 -c half2 > b.zst; cat a.zst b.zst` (zstd 1.5.4).
const SMALL_LAYER_ZSTD: &[u8] = &[
    0x28, 0xb5, 0x2f, 0xfd, 0x64, 0x00, 0x05, 0xd5, 0x02, 0x00, 0xa2, 0xc3, 0x0c, 0x12, 0xa0, 0xbb,
    0x01, 0x40, 0x9b, 0x67, 0x4f, 0x07, 0x00, 0x73, 0xa1, 0xc9, 0xef, 0x26, 0x83, 0x40, 0x11, 0x53,
    0x07, 0xa6, 0xb1, 0x17, 0xf0, 0x4d, 0xb4, 0x47, 0xee, 0x12, 0x95, 0xd2, 0x41, 0xe2, 0x1d, 0xf1,
    0xab, 0x34, 0xe6, 0xce, 0xef, 0x55, 0x92, 0xdb, 0xda, 0x23, 0x8f, 0x67, 0x6e, 0xbc, 0x78, 0x01,
    0x0e, 0x20, 0x50, 0x2d, 0x2d, 0x73, 0xf1, 0x57, 0x16, 0x80, 0x00, 0xc0, 0xd4, 0x02, 0xc1, 0xb3,
    0x87, 0x0f, 0x38, 0x99, 0x39, 0xd4, 0x01, 0x22, 0x99, 0xfd, 0x78, 0x58, 0x20, 0x01, 0xa6, 0x00,
    0xe6, 0x93, 0x72, 0x03, 0xa2, 0x35, 0x3c, 0xc8, 0x28, 0xb5, 0x2f, 0xfd, 0x64, 0x00, 0x05, 0x15,
    0x02, 0x00, 0xb4, 0x02, 0x7a, 0x2f, 0x6c, 0x69, 0x6e, 0x6b, 0x00, 0x30, 0x36, 0x34, 0x34, 0x00,
    0x30, 0x00, 0x31, 0x33, 0x37, 0x32, 0x37, 0x34, 0x31, 0x31, 0x30, 0x31, 0x34, 0x33, 0x00, 0x32,
    0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x00, 0x75, 0x73, 0x74, 0x61, 0x72, 0x00, 0x30, 0x30, 0x00, 0x08,
    0x20, 0x30, 0x35, 0x1d, 0xf3, 0xf8, 0x8f, 0xe5, 0xf9, 0x77, 0x66, 0x87, 0x20, 0x41, 0x4c, 0x01,
    0x4c, 0x27, 0xb7, 0x05, 0x75, 0xdc, 0xeb, 0x42,
];

#[test]
fn zstd_fixture_matches_the_layer() {
    let fixture = Fixture::new();
    let unpacked = unpack_layer(SMALL_LAYER_ZSTD, Compression::Zstd, &fixture.dest).unwrap();
    assert_small_layer(&fixture.dest, &unpacked);
}

#[test]
fn zstd_skippable_frames_are_skipped() {
    let mut stream = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
    stream.extend_from_slice(SMALL_LAYER_ZSTD);
    stream.extend_from_slice(&[0x5f, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]);
    let fixture = Fixture::new();
    let unpacked = unpack_layer(&stream[..], Compression::Zstd, &fixture.dest).unwrap();
    assert_small_layer(&fixture.dest, &unpacked);
}

#[test]
fn corrupt_compression_is_a_corrupt_layer() {
    let fixture = Fixture::new();
    let mut gz = gzip(&small_layer());
    let middle = gz.len() / 2;
    gz[middle] ^= 0xff;
    let err = unpack_layer(&gz[..], Compression::Gzip, &fixture.dest).unwrap_err();
    assert!(matches!(err, UnpackError::Corrupt { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);

    let err =
        unpack_layer(&small_layer()[..], Compression::Zstd, &Fixture::new().dest).unwrap_err();
    assert!(matches!(err, UnpackError::Corrupt { .. }), "{err:?}");

    // The last 4 bytes are the second frame's content checksum.
    let mut zst = SMALL_LAYER_ZSTD.to_vec();
    let last = zst.len() - 1;
    zst[last] ^= 0xff;
    let err = unpack_layer(&zst[..], Compression::Zstd, &Fixture::new().dest).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

/// Yields `data`, then the given error instead of EOF (like the pull's digest-verifying reader).
struct FailAtEof<'a> {
    data: &'a [u8],
    kind: io::ErrorKind,
}

impl Read for FailAtEof<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(io::Error::new(self.kind, "digest mismatch: sha256:abc"));
        }
        self.data.read(buf)
    }
}

#[test]
fn a_reader_failing_at_eof_fails_the_unpack() {
    let tar = small_layer();
    let cases = [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, SMALL_LAYER_ZSTD.to_vec()),
    ];
    for (compression, blob) in cases {
        let fixture = Fixture::new();
        let reader = FailAtEof {
            data: &blob,
            kind: io::ErrorKind::InvalidData,
        };
        let err = unpack_layer(reader, compression, &fixture.dest).unwrap_err();
        match &err {
            UnpackError::Stream(e) => assert!(
                e.to_string().contains("digest mismatch"),
                "{compression:?}: {e}"
            ),
            other => panic!("{compression:?}: expected a stream error, got {other:?}"),
        }
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    }
    let reader = FailAtEof {
        data: &tar,
        kind: io::ErrorKind::ConnectionReset,
    };
    let err = unpack_layer(reader, Compression::None, &Fixture::new().dest).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
}

/// Counts the bytes read from it.
struct Counting<'a> {
    data: &'a [u8],
    read: usize,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

#[test]
fn trailing_blocks_are_drained_and_hashed() {
    // `tar` pads archives to 10 KiB records: the diff_id covers the padding too.
    let mut tar = small_layer();
    tar.resize(10240, 0);
    let fixture = Fixture::new();
    let mut reader = Counting {
        data: &tar,
        read: 0,
    };
    let unpacked = unpack_layer(&mut reader, Compression::None, &fixture.dest).unwrap();
    assert_eq!(reader.read, tar.len());
    assert_eq!((unpacked.diff_id, unpacked.size), (sha256(&tar), 10240));

    let gz = gzip(&tar);
    let mut reader = Counting { data: &gz, read: 0 };
    let unpacked = unpack_layer(&mut reader, Compression::Gzip, &Fixture::new().dest).unwrap();
    assert_eq!(reader.read, gz.len());
    assert_eq!(unpacked.diff_id, sha256(&tar));
}

#[test]
fn rejects_dotdot_components() {
    for name in [
        "../outside/pwned",
        "a/../../outside/pwned",
        "./../outside/pwned",
        "a/b/../c",
    ] {
        let fixture = Fixture::new();
        let tar = Layer::default().file(name, b"pwned").finish();
        assert_unsafe(fixture.unpack(&tar), name);
        fixture.assert_outside_empty();
    }
}

#[test]
fn rejects_writes_through_a_planted_symlink() {
    for target in [None, Some("../outside"), Some("../../../../../..")] {
        for victim in ["evil/pwned", "evil/sub/pwned", "evil/"] {
            let fixture = Fixture::new();
            let target = target.unwrap_or(fixture.outside.to_str().unwrap());
            let tar = Layer::default()
                .symlink("evil", target)
                .file(victim, b"pwned")
                .file(victim, b"again")
                .finish();
            if victim == "evil/" {
                // The entry names the link itself: the link is replaced, nothing is followed.
                fixture.unpack(&tar).unwrap();
                assert!(fs::symlink_metadata(fixture.dest.join("evil"))
                    .unwrap()
                    .is_file());
            } else {
                assert_unsafe(fixture.unpack(&tar), victim);
            }
            fixture.assert_outside_empty();
        }
    }
    // A symlink deeper in the tree, and a directory entry below one.
    let fixture = Fixture::new();
    let tar = Layer::default()
        .dir("a/")
        .symlink("a/b", fixture.outside.to_str().unwrap())
        .dir("a/b/c/")
        .finish();
    assert_unsafe(fixture.unpack(&tar), "a/b/c/");
    fixture.assert_outside_empty();
}

#[test]
fn rejects_escaping_hardlinks() {
    let fixture = Fixture::new();
    let secret = fixture.outside.join("secret");
    fs::write(&secret, b"secret").unwrap();
    let nlink = || fs::metadata(&secret).unwrap().nlink();

    let tar = Layer::default().hardlink("h", "../outside/secret").finish();
    assert_unsafe(fixture.unpack(&tar), "h");

    let tar = Layer::default()
        .symlink("evil", fixture.outside.to_str().unwrap())
        .hardlink("h", "evil/secret")
        .finish();
    assert_unsafe(fixture.unpack(&tar), "h");

    // An absolute target is refused outright.
    let tar = Layer::default()
        .hardlink("h2", secret.to_str().unwrap())
        .finish();
    assert_unsafe(fixture.unpack(&tar), "h2");

    assert_eq!(nlink(), 1, "nothing links to the outside file");
    assert_eq!(fs::read(&secret).unwrap(), b"secret");
    assert_eq!(fixture.outside_names(), vec!["secret"]);
}

#[test]
fn rejects_whiteouts_through_a_planted_symlink() {
    let fixture = Fixture::new();
    let victim = fixture.outside.join("victim");
    fs::write(&victim, b"keep").unwrap();
    let link = fixture.outside.to_str().unwrap();

    let tar = Layer::default()
        .symlink("evil", link)
        .file("evil/.wh.victim", b"")
        .finish();
    assert_unsafe(fixture.unpack(&tar), "evil/.wh.victim");
    let tar = Layer::default()
        .symlink("evil", link)
        .file("evil/.wh..wh..opq", b"")
        .finish();
    assert_unsafe(fixture.unpack(&tar), "evil/.wh..wh..opq");
    let tar = Layer::default().file(".wh...", b"").finish();
    assert_unsafe(fixture.unpack(&tar), ".wh...");

    assert_eq!(fs::read(&victim).unwrap(), b"keep");
    assert_eq!(lgetxattr(&fixture.outside, "trusted.overlay.opaque"), None);
    assert_eq!(fixture.outside_names(), vec!["victim"]);
}

#[test]
fn rejects_non_directory_roots_and_unknown_types() {
    let fixture = Fixture::new();
    let err = fixture
        .unpack(&Layer::default().file("./", b"x").finish())
        .unwrap_err();
    assert!(matches!(err, UnpackError::Invalid { .. }), "{err:?}");
    let tar = Layer::default()
        .entry(b"weird", tar::EntryType::new(b'Z'), b"", b"", |_| {})
        .finish();
    let err = fixture.unpack(&tar).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Invalid { entry, .. } if entry == "weird"),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[test]
fn error_kinds() {
    let io_err = UnpackError::Io {
        entry: "a".into(),
        path: "/x".into(),
        source: io::Error::other("disk full"),
    };
    assert_eq!(io_err.kind(), ErrorKind::Internal);
    assert!(io_err
        .to_string()
        .starts_with("unpacking layer entry \"a\" at /x"));
    let bad_tar = Fixture::new().unpack(&[1u8; 600]).unwrap_err();
    assert!(
        matches!(bad_tar, UnpackError::Corrupt { .. }),
        "{bad_tar:?}"
    );
    assert_eq!(bad_tar.kind(), ErrorKind::FailedPrecondition);
}

#[test]
fn media_types() {
    use Compression::*;
    for (media_type, expected) in [
        ("application/vnd.oci.image.layer.v1.tar", Some(None)),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Some(Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Some(Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Some(Gzip),
        ),
        ("application/vnd.oci.image.config.v1+json", Option::None),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", Option::None),
    ] {
        assert_eq!(
            Compression::from_media_type(media_type),
            expected,
            "{media_type}"
        );
    }
}

/// A gzip layer of one `size`-byte file of zeros, compressed as it streams.
fn gzip_bomb(size: u64) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros").unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header.set_cksum();
    let tar = io::Cursor::new(header.as_bytes().to_vec())
        .chain(io::repeat(0).take(size))
        .chain(io::Cursor::new(vec![0u8; 1024]));
    let mut out = Vec::new();
    flate2::read::GzEncoder::new(tar, flate2::Compression::fast())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn gzip_bomb_past_the_layer_limit_is_refused_as_resource_exhausted() {
    let fx = Fixture::new();
    let bomb = gzip_bomb(16 << 20);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let limits = Limits {
        layer: 1 << 20,
        image: None,
    };
    let err =
        unpack_layer_limited(bomb.as_slice(), Compression::Gzip, &fx.dest, &limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge(Exceeded::Layer(n)) if n == 1 << 20),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(err.to_string().contains("max_layer_size"), "{err}");
    // Stopped at the limit, not after writing it all.
    let written = fs::metadata(fx.dest.join("zeros"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 1 << 20, "{written}");
    fx.assert_outside_empty();

    // Within the limit it unpacks.
    let fx = Fixture::new();
    let limits = Limits {
        layer: 32 << 20,
        image: None,
    };
    let unpacked =
        unpack_layer_limited(bomb.as_slice(), Compression::Gzip, &fx.dest, &limits).unwrap();
    assert_eq!(fs::metadata(fx.dest.join("zeros")).unwrap().len(), 16 << 20);
    assert!(unpacked.size > 16 << 20);
}

#[test]
fn layers_of_one_image_share_the_image_limit() {
    let used = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let limits = Limits {
        layer: 0,
        image: Some((3 << 20, used.clone())),
    };
    let layer = gzip_bomb(2 << 20);
    let fx = Fixture::new();
    unpack_layer_limited(layer.as_slice(), Compression::Gzip, &fx.dest, &limits).unwrap();
    let fx = Fixture::new();
    let err =
        unpack_layer_limited(layer.as_slice(), Compression::Gzip, &fx.dest, &limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooLarge(Exceeded::Image(n)) if n == 3 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_image_size"), "{err}");
}

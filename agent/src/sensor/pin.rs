//! The sensor's objects pinned on the BPF filesystem, so they outlive the agent process.
//!
//! Under the pin directory (default `/sys/fs/bpf/vigil`) live the maps (flow table shards,
//! counters, blocklists), `link`, the XDP attachment, and `link_egress`, the TC egress
//! attachment (a tcx link) when egress is on. While `link` is pinned the program stays
//! attached and its rules keep dropping even if the agent dies; a restarted agent loads the
//! same maps and swaps its programs into the pinned links (`BPF_LINK_UPDATE`), and
//! `vigil block`/`vigil status` open the maps from here. `vigil detach` removes it all.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use agent_common::{counters::Counters, maps};
use aya::maps::{Map, MapData, PerCpuArray};

/// Where `vigil run` pins the sensor unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/vigil";
/// Where the BPF filesystem is normally mounted; the agent mounts it there if it is not.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// File name of the pinned XDP link.
pub const LINK: &str = "link";
/// File name of the pinned TC egress link.
pub const EGRESS_LINK: &str = "link_egress";
/// Every map the sensor pins, by name.
pub const PINNED_MAPS: [&str; 6] =
    [maps::FLOWS[0], maps::FLOWS[1], maps::COUNTERS, maps::BLOCK_V4, maps::BLOCK_V6, maps::LAYOUT];

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `BPF_OBJ_GET`, `BPF_OBJ_GET_INFO_BY_FD` and `BPF_LINK_DETACH` from `linux/bpf.h`.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Errors with the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin directory {path} is not on a BPF filesystem (mount one with `mount -t bpf bpf {BPFFS_ROOT}`)")]
    NotBpffs { path: PathBuf },
    #[error("mounting the BPF filesystem on {BPFFS_ROOT}: {0}")]
    Mount(nix::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no sensor is pinned under {path} (no `link` there): is the agent running with this pin directory?")]
    NotPinned { path: PathBuf },
    #[error("another agent is running with pin directory {path} (it holds its lock)")]
    Busy { path: PathBuf },
    #[error("pinned map {path}: {source}")]
    Map { path: PathBuf, source: aya::maps::MapError },
    #[error(transparent)]
    Layout(#[from] super::layout::LayoutError),
    #[error(transparent)]
    Private(#[from] crate::private_dir::PrivateDirError),
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure `dir` exists on a BPF filesystem. If it lies under `/sys/fs/bpf` and nothing is
/// mounted there (as inside `ip netns exec`, which remounts `/sys`), mounts one.
///
/// # Errors
/// [`PinError`] if `dir` is elsewhere than on a BPF filesystem, or mounting/creating fails.
pub fn ensure_bpffs(dir: &Path) -> Result<(), PinError> {
    let root = Path::new(BPFFS_ROOT);
    if dir.starts_with(root) && !is_bpffs(root) {
        // Mode 0700: only root may pin (or unpin) anything there.
        nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), Some("mode=0700"))
            .map_err(PinError::Mount)?;
        tracing::info!(path = BPFFS_ROOT, "mounted the BPF filesystem (mode 0700)");
    }
    // Whoever can write the pin directory can unlink `link` and detach the sensor.
    crate::private_dir::ensure(dir)?;
    if !is_bpffs(dir) {
        return Err(PinError::NotBpffs { path: dir.to_owned() });
    }
    Ok(())
}

/// Takes the pin directory's exclusive lock (`flock` on the directory), held while the
/// returned value lives: two agents must not drive the same pinned sensor.
///
/// # Errors
/// [`PinError::Busy`] if another process holds it.
pub fn lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, PinError> {
    let file = std::fs::File::open(dir).map_err(|source| PinError::Io { path: dir.to_owned(), source })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| PinError::Busy { path: dir.to_owned() })
}

/// The pinned objects of one sensor, for the control commands.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the pinned XDP link.
    #[must_use]
    pub fn link(&self) -> PathBuf {
        self.dir.join(LINK)
    }

    /// Whether an XDP attachment is pinned here.
    #[must_use]
    pub fn is_attached(&self) -> bool {
        self.link().exists()
    }

    /// Checks that the maps pinned here are of this build's layout (any flow capacity), before
    /// a control command reads or writes them.
    ///
    /// # Errors
    /// [`PinError::Layout`] naming the first map that differs.
    pub fn check_layout(&self) -> Result<(), PinError> {
        Ok(super::layout::check(&self.dir, &PINNED_MAPS, LINK, None)?)
    }

    /// The sensor counters summed over CPUs, read from the pinned map.
    ///
    /// # Errors
    /// If the map is not pinned here, is of another layout, or cannot be read.
    pub fn counters(&self) -> Result<super::DirectionCounters, PinError> {
        self.check_layout()?;
        self.counters_of_checked_layout()
    }

    /// [`Pins::counters`] for a caller that has just run [`Pins::check_layout`].
    pub(crate) fn counters_of_checked_layout(&self) -> Result<super::DirectionCounters, PinError> {
        let path = self.dir.join(maps::COUNTERS);
        let err = |source| PinError::Map { path: path.clone(), source };
        let map = MapData::from_pin(&path).and_then(Map::from_map_data).map_err(err)?;
        let array: PerCpuArray<MapData, Counters> = PerCpuArray::try_from(map).map_err(err)?;
        super::sum_counters(&array).map_err(err)
    }

    /// Path of the pinned TC egress link.
    #[must_use]
    pub fn egress_link(&self) -> PathBuf {
        self.dir.join(EGRESS_LINK)
    }

    /// Detaches the pinned XDP link and the egress link right away (`BPF_LINK_DETACH`, which
    /// works even while a running agent still holds them) and removes their pins. Returns
    /// whether the XDP link was there.
    ///
    /// # Errors
    /// If a link cannot be opened, detached or unpinned.
    pub fn detach_link(&self) -> Result<bool, PinError> {
        self.detach_egress()?;
        Self::detach_pinned(&self.link())
    }

    /// Detaches the pinned egress link alone and removes its pin. Returns whether one was there.
    ///
    /// # Errors
    /// If the link cannot be opened, detached or unpinned.
    pub fn detach_egress(&self) -> Result<bool, PinError> {
        Self::detach_pinned(&self.egress_link())
    }

    fn detach_pinned(path: &Path) -> Result<bool, PinError> {
        let path = path.to_owned();
        if !path.exists() {
            return Ok(false);
        }
        let fd = obj_get(&path).map_err(|source| PinError::Io { path: path.clone(), source })?;
        link_detach(&fd).map_err(|source| PinError::Io { path: path.clone(), source })?;
        std::fs::remove_file(&path).map_err(|source| PinError::Io { path: path.clone(), source })?;
        Ok(true)
    }

    /// Detaches the link and removes every pinned map and the directory: the kernel frees the
    /// maps once no process holds them. Returns what was removed.
    ///
    /// # Errors
    /// If detaching or removing a pin fails.
    pub fn remove_all(&self) -> Result<Vec<String>, PinError> {
        let mut removed = Vec::new();
        if self.detach_egress()? {
            removed.push(EGRESS_LINK.to_owned());
        }
        if self.detach_link()? {
            removed.push(LINK.to_owned());
        }
        for name in PINNED_MAPS {
            let path = self.dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(name.to_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(PinError::Io { path, source }),
            }
        }
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(PinError::Io { path: self.dir.clone(), source }),
        }
        Ok(removed)
    }
}

/// `bpf(cmd, attr)` with a zeroed `union bpf_attr` prefix of 16 bytes.
fn bpf(cmd: libc::c_long, attr: &mut [u32; 4]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed (the kernel zero-extends
    // shorter attributes), alive for the call; the kernel only reads it for these commands.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 16 as libc::c_uint) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// `BPF_OBJ_GET`: a new fd for a pinned object (aya's `FdLink` does not expose its fd).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // `{ __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }`
    let ptr = c_path.as_ptr() as u64;
    #[expect(clippy::cast_possible_truncation, reason = "splitting a u64 into its halves")]
    let mut attr = [ptr as u32, (ptr >> 32) as u32, 0, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A reference of our own to the pinned XDP link, kept while the agent runs, to tell
/// `vigil detach` (which detaches the link, then unpins it) from a pin merely removed (the
/// link still attached): the first is a normal stop, the second an attack or a mistake.
#[derive(Debug)]
pub struct LinkWatch {
    fd: OwnedFd,
}

impl LinkWatch {
    /// Opens the link pinned at `path`.
    ///
    /// # Errors
    /// If there is no link there.
    pub fn open(path: &Path) -> Result<Self, PinError> {
        obj_get(path).map(|fd| Self { fd }).map_err(|source| PinError::Io { path: path.to_owned(), source })
    }

    /// Whether the link still drives an interface: `BPF_OBJ_GET_INFO_BY_FD` on an XDP link
    /// reports interface index 0 once it was detached (`BPF_LINK_DETACH` or the interface gone).
    #[must_use]
    pub fn is_attached(&self) -> bool {
        // `struct bpf_link_info`: type, id, prog_id (u32 each), then at offset 16 the union
        // whose `xdp` member starts with `ifindex`.
        let mut info = [0u32; 8];
        let Ok(fd) = u32::try_from(self.fd.as_raw_fd()) else { return false };
        let ptr = info.as_mut_ptr() as u64;
        let len = u32::try_from(std::mem::size_of_val(&info)).unwrap_or(0);
        // `{ __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }`
        #[expect(clippy::cast_possible_truncation, reason = "splitting a u64 into its halves")]
        let mut attr = [fd, len, ptr as u32, (ptr >> 32) as u32];
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_ok() && info[4] != 0
    }
}

/// `BPF_LINK_DETACH`: the attachment goes away for every holder of the link.
fn link_detach(link: &OwnedFd) -> io::Result<()> {
    // `{ __u32 link_fd; }`
    let fd = u32::try_from(link.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    bpf(BPF_LINK_DETACH, &mut [fd, 0, 0, 0]).map(drop)
}

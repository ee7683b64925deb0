//! Loading the sensor into the kernel and attaching it to an interface: the XDP program on
//! ingress, and optionally the TC classifier on egress (a tcx link; Linux 6.6+ when pinned).

pub mod batch;
pub mod layout;
pub mod pin;

use std::{fmt, path::PathBuf};

use agent_common::{
    counters::{Counters, Direction},
    flow::{FlowKey, FlowStats},
    maps,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use tracing::{info, warn};

/// One shard of the kernel flow table as the agent holds it. The sensor owns the map types;
/// `flows` reads them (never the reverse).
pub type FlowTable = PerCpuHashMap<MapData, FlowKey, FlowStats>;

/// The compiled XDP object, built by `build.rs` and embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent"));

/// How to attach the program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode.
    Native,
    /// Generic (SKB) mode, slower, works on every interface.
    Skb,
    /// Native if the driver supports it, otherwise SKB.
    #[default]
    Auto,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
            Self::Auto => "auto",
        })
    }
}

/// Errors loading or attaching the sensor.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{name}` missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map `{name}` missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map `{name}` has an unexpected type: {source}")]
    MapType { name: &'static str, source: aya::maps::MapError },
    #[error("loading program `{name}` (verifier): {source}")]
    Verifier { name: &'static str, source: ProgramError },
    #[error("program `{name}` is not of the expected type: {source}")]
    ProgramType { name: &'static str, source: ProgramError },
    #[error("attaching the TC egress program to `{iface}`: {source}")]
    AttachEgress { iface: String, source: ProgramError },
    #[error(
        "the egress hook can only be pinned as a tcx link, which needs Linux 6.6 or later (this is {kernel}): \
         run with `--no-pin`, or with `--no-egress` (`sensor.egress = false`, the model then sees no answers)"
    )]
    EgressNeedsTcx { kernel: String },
    #[error("pinning the TC egress link at {path}: {reason}")]
    PinEgress { path: PathBuf, reason: String },
    #[error("interface `{iface}` does not exist")]
    NoSuchInterface { iface: String },
    #[error("attaching XDP in {mode} mode to `{iface}`: {source}")]
    Attach { iface: String, mode: AttachMode, source: ProgramError },
    #[error("detaching XDP from `{iface}`: {source}")]
    Detach { iface: String, source: ProgramError },
    #[error("flow table capacity must be at least 1, got {0}")]
    BadCapacity(u32),
    #[error("reading map `{name}`: {source}")]
    MapRead { name: &'static str, source: aya::maps::MapError },
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("pinning the XDP link at {path}: {reason}")]
    PinLink { path: PathBuf, reason: String },
    #[error("taking over the pinned XDP link at {path}: {reason}")]
    Takeover { path: PathBuf, reason: String },
}

/// Load-time settings.
#[derive(Clone, Debug)]
pub struct SensorOptions {
    /// Flow table capacity (entries).
    pub flow_capacity: u32,
    /// Pin the maps and the XDP link here (see [`pin`]) so they outlive the process; `None`
    /// keeps everything owned by the process (detached when it exits).
    pub pin_dir: Option<PathBuf>,
}

impl Default for SensorOptions {
    fn default() -> Self {
        Self { flow_capacity: maps::DEFAULT_FLOW_CAPACITY, pin_dir: None }
    }
}

/// How the attachment is held.
enum Attachment {
    /// Owned by the program object: detached when the sensor is dropped.
    Owned,
    /// Pinned: stays attached after the process exits, until `vigil detach`. Holds the link
    /// it pinned (none when it took over an earlier run's link, which the program then holds).
    Pinned(#[expect(dead_code, reason = "held only to keep the fd open while running")] Option<PinnedLink>),
}

/// The loaded sensor: the eBPF object with its programs verified and maps created (or, when
/// pinned, reopened from the pins of an earlier run). Dropping it detaches an unpinned program
/// and frees everything not pinned.
pub struct Sensor {
    ebpf: Ebpf,
    pins: Option<pin::Pins>,
    attached: Option<(String, AttachMode, Attachment)>,
    /// The pins held maps of an earlier run when this sensor loaded.
    reused: bool,
    /// Exclusive lock on the pin directory: one agent per pinned sensor.
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
    /// Our own reference to the pinned link, to tell `vigil detach` from a removed pin.
    watch: Option<pin::LinkWatch>,
    /// The TC egress attachment, when egress is on.
    egress: Option<Attachment>,
}

/// The sensor counters of each hook ([`Direction`]), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters(pub [Counters; Direction::COUNT]);

impl DirectionCounters {
    /// The counters of one hook.
    #[must_use]
    pub fn of(&self, direction: Direction) -> &Counters {
        &self.0[direction as usize]
    }

    /// Both hooks together: everything the sensor saw.
    #[must_use]
    pub fn total(&self) -> Counters {
        let mut total = Counters::default();
        for c in &self.0 {
            total.add(c);
        }
        total
    }
}

/// What became of the pinned link ([`Sensor::pin_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinState {
    /// Not pinned, or pinned and in place.
    Intact,
    /// Detached and unpinned: `vigil detach` ran.
    Detached,
    /// The pin is gone but the link is still attached: someone removed it without
    /// `vigil detach`.
    Unpinned,
}

impl Sensor {
    /// Creates the maps and loads both programs (the sensor and the empty floor program)
    /// through the verifier. Nothing is attached yet.
    ///
    /// # Errors
    /// [`SensorError`] if the object does not load or a program is rejected.
    pub fn load(options: &SensorOptions) -> Result<Self, SensorError> {
        if options.flow_capacity == 0 {
            return Err(SensorError::BadCapacity(0));
        }
        raise_memlock();
        let per_shard = options.flow_capacity.div_ceil(u32::try_from(maps::FLOW_SHARDS).unwrap_or(1));
        let mut loader = EbpfLoader::new();
        for name in maps::FLOWS {
            loader.map_max_entries(name, per_shard);
        }
        let pins = options.pin_dir.as_ref().map(pin::Pins::new);
        let mut reused = false;
        let mut lock = None;
        if let Some(pins) = &pins {
            pin::ensure_bpffs(pins.dir())?;
            lock = Some(pin::lock(pins.dir())?);
            // aya would reuse any map pinned under these names, whatever its shape.
            layout::check(pins.dir(), &pin::PINNED_MAPS, pin::LINK, Some(options.flow_capacity))
                .map_err(pin::PinError::from)?;
            for name in pin::PINNED_MAPS {
                let path = pins.dir().join(name);
                reused |= path.exists();
                loader.map_pin_path(name, path);
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        if !reused {
            layout::write_version(&mut ebpf).map_err(|source| SensorError::MapRead { name: maps::LAYOUT, source })?;
        }
        let verifier = |name| move |source| SensorError::Verifier { name, source };
        for name in [maps::PROGRAM, maps::PROGRAM_EMPTY] {
            typed_program::<Xdp>(&mut ebpf, name)?.load().map_err(verifier(name))?;
        }
        for name in [maps::PROGRAM_EGRESS, maps::PROGRAM_EGRESS_EMPTY] {
            typed_program::<SchedClassifier>(&mut ebpf, name)?.load().map_err(verifier(name))?;
        }
        if reused {
            info!(pin_dir = %options.pin_dir.as_deref().unwrap_or_else(|| "".as_ref()).display(),
                  "reusing the pinned maps of an earlier run (flows, counters and rules carry over)");
        }
        Ok(Self { ebpf, pins, attached: None, reused, _lock: lock, watch: None, egress: None })
    }

    /// Whether the maps were reopened from an earlier run's pins.
    #[must_use]
    pub const fn reused_pins(&self) -> bool {
        self.reused
    }

    /// The pinned objects, when pinning.
    #[must_use]
    pub const fn pins(&self) -> Option<&pin::Pins> {
        self.pins.as_ref()
    }

    /// Attaches the sensor program to `iface`. In [`AttachMode::Auto`], native mode is tried
    /// first and SKB mode used if the driver refuses it. Returns the mode in effect.
    ///
    /// # Errors
    /// [`SensorError`] if the interface does not exist or the attachment fails; nothing is
    /// left attached in that case.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, SensorError> {
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(SensorError::NoSuchInterface { iface: iface.to_owned() });
        }
        if let Some(link_path) = self.pins.as_ref().map(pin::Pins::link).filter(|p| p.exists()) {
            return self.take_over(iface, mode, &link_path);
        }
        let pinned = self.pins.as_ref().map(pin::Pins::link);
        let program = self.program_mut(maps::PROGRAM)?;
        let attach = |program: &mut Xdp, mode: AttachMode| {
            let flags = if mode == AttachMode::Skb { XdpMode::Skb } else { XdpMode::Driver };
            program.attach(iface, flags).map_err(|source| SensorError::Attach { iface: iface.to_owned(), mode, source })
        };
        let (link_id, effective) = match mode {
            AttachMode::Auto => match attach(program, AttachMode::Native) {
                Ok(id) => (id, AttachMode::Native),
                Err(e) => {
                    warn!(error = %e, "native XDP unavailable on {iface}, falling back to SKB mode");
                    (attach(program, AttachMode::Skb)?, AttachMode::Skb)
                }
            },
            mode => (attach(program, mode)?, mode),
        };
        let attachment = if let Some(path) = pinned {
            let fail = |reason: String| SensorError::PinLink { path: path.clone(), reason };
            let link = program.take_link(link_id).map_err(|e| fail(e.to_string()))?;
            // A netlink attachment (kernels before 5.9) cannot be pinned: give up cleanly.
            let fd_link = FdLink::try_from(link).map_err(|e| fail(e.to_string()))?;
            let pinned = fd_link.pin(&path).map_err(|e| fail(e.to_string()))?;
            self.watch = Some(pin::LinkWatch::open(&path)?);
            Attachment::Pinned(Some(pinned))
        } else {
            Attachment::Owned
        };
        info!(iface, mode = %effective, pinned = matches!(attachment, Attachment::Pinned(_)), "XDP sensor attached");
        if effective == AttachMode::Skb {
            warn_skb_mode(iface);
        }
        self.attached = Some((iface.to_owned(), effective, attachment));
        Ok(effective)
    }

    /// Swaps this sensor's freshly loaded program into the link an earlier run pinned
    /// (`BPF_LINK_UPDATE`, atomic: no packet goes unseen).
    fn take_over(&mut self, iface: &str, mode: AttachMode, path: &std::path::Path) -> Result<AttachMode, SensorError> {
        let fail = |reason: String| SensorError::Takeover { path: path.to_owned(), reason };
        let watch = pin::LinkWatch::open(path)?;
        let pinned = PinnedLink::from_pin(path).map_err(|e: LinkError| fail(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| fail(e.to_string()))?;
        self.program_mut(maps::PROGRAM)?.attach_to_link(link).map_err(|e| fail(e.to_string()))?;
        info!(iface, link = %path.display(), "XDP sensor attached: took over the pinned link of an earlier run");
        if mode == AttachMode::Skb {
            warn_skb_mode(iface);
        }
        self.attached = Some((iface.to_owned(), mode, Attachment::Pinned(None)));
        self.watch = Some(watch);
        Ok(mode)
    }

    /// Attaches the egress program to `iface` (the host's own packets), or, when pinned and an
    /// earlier run pinned an egress link, swaps this sensor's program into it. On Linux 6.6+
    /// the attachment is a tcx link (pinned beside the XDP link when pinning); before, a
    /// `clsact` filter over netlink, which cannot be pinned.
    ///
    /// # Errors
    /// [`SensorError`] if the interface does not exist, the kernel refuses, or pinning needs
    /// tcx on an older kernel; nothing of the egress hook is left attached then.
    pub fn attach_egress(&mut self, iface: &str) -> Result<(), SensorError> {
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(SensorError::NoSuchInterface { iface: iface.to_owned() });
        }
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let pinned = self.pins.as_ref().map(pin::Pins::egress_link);
        if let Some(path) = pinned.as_ref().filter(|p| p.exists()) {
            let fail = |reason: String| SensorError::Takeover { path: path.clone(), reason };
            let old = PinnedLink::from_pin(path).map_err(|e: LinkError| fail(e.to_string()))?;
            let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| fail(e.to_string()))?;
            self.egress_program(maps::PROGRAM_EGRESS)?.attach_to_link(link).map_err(|e| fail(e.to_string()))?;
            info!(iface, link = %path.display(), "TC egress sensor attached: took over the pinned link of an earlier run");
            self.egress = Some(Attachment::Pinned(None));
            return Ok(());
        }
        if pinned.is_some() && !tcx {
            let kernel = KernelVersion::current().map_or_else(|_| "unknown".to_owned(), |v| v.to_string());
            return Err(SensorError::EgressNeedsTcx { kernel });
        }
        let program = self.egress_program(maps::PROGRAM_EGRESS)?;
        let fail = |source| SensorError::AttachEgress { iface: iface.to_owned(), source };
        let link_id = if tcx {
            program
                .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(fail)?
        } else {
            // An existing clsact qdisc is fine; any other failure shows in the attach below.
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
            program.attach(iface, TcAttachType::Egress).map_err(fail)?
        };
        let attachment = if let Some(path) = pinned {
            let fail = |reason: String| SensorError::PinEgress { path: path.clone(), reason };
            let link = program.take_link(link_id).map_err(|e| fail(e.to_string()))?;
            let fd_link = FdLink::try_from(link).map_err(|e| fail(e.to_string()))?;
            Attachment::Pinned(Some(fd_link.pin(&path).map_err(|e| fail(e.to_string()))?))
        } else {
            Attachment::Owned
        };
        info!(iface, tcx, pinned = matches!(attachment, Attachment::Pinned(_)), "TC egress sensor attached");
        self.egress = Some(attachment);
        Ok(())
    }

    /// Removes an egress link an earlier run pinned, for a run without egress. Returns whether
    /// there was one.
    ///
    /// # Errors
    /// If the pinned link cannot be detached.
    pub fn drop_pinned_egress(&mut self) -> Result<bool, SensorError> {
        let Some(pins) = &self.pins else { return Ok(false) };
        let removed = pins.detach_egress()?;
        if removed {
            info!(link = %pins.egress_link().display(), "egress is off: detached the egress link an earlier run pinned");
        }
        Ok(removed)
    }

    /// Detaches the sensor program (the maps stay readable), pinned link included. Does
    /// nothing if not attached.
    ///
    /// # Errors
    /// If the kernel refuses to detach.
    pub fn detach(&mut self) -> Result<(), SensorError> {
        if let Some(attachment) = self.egress.take() {
            if let (Attachment::Pinned(_), Some(pins)) = (attachment, &self.pins) {
                pins.detach_egress()?;
            }
            let name = maps::PROGRAM_EGRESS;
            let iface = self.attached.as_ref().map(|(i, _, _)| i.clone()).unwrap_or_default();
            self.egress_program(name)?
                .unload()
                .map_err(|source| SensorError::Detach { iface: iface.clone(), source })?;
            info!(iface, "TC egress sensor detached");
        }
        if let Some((iface, _, attachment)) = self.attached.take() {
            if let (Attachment::Pinned(_), Some(pins)) = (attachment, &self.pins) {
                pins.detach_link()?;
            }
            let name = maps::PROGRAM;
            self.program_mut(name)?.unload().map_err(|source| SensorError::Detach { iface: iface.clone(), source })?;
            info!(iface, "XDP sensor detached");
        }
        Ok(())
    }

    /// Lets go of the sensor without detaching it: a pinned attachment stays in the kernel
    /// (with its maps) for the next run or `vigil detach`. An unpinned one is detached.
    ///
    /// # Errors
    /// If detaching an unpinned program fails.
    pub fn release(mut self) -> Result<(), SensorError> {
        match self.attached.as_ref() {
            Some((iface, _, Attachment::Pinned(_))) => {
                let dir = self.pins.as_ref().map(|p| p.dir().display().to_string()).unwrap_or_default();
                info!(iface, pin_dir = dir, "leaving the XDP sensor attached and pinned; `vigil detach` removes it");
                Ok(())
            }
            _ => self.detach(),
        }
    }

    /// Whether the pinned link is still in place, was detached by `vigil detach`, or was
    /// unpinned while still attached (which the agent treats as an error).
    #[must_use]
    pub fn pin_state(&self) -> PinState {
        let pinned = matches!(self.attached, Some((_, _, Attachment::Pinned(_))));
        if !pinned || self.pins.as_ref().is_none_or(pin::Pins::is_attached) {
            return PinState::Intact;
        }
        if self.watch.as_ref().is_some_and(pin::LinkWatch::is_attached) {
            PinState::Unpinned
        } else {
            PinState::Detached
        }
    }

    /// The interface and mode the sensor is attached with, if any.
    #[must_use]
    pub fn attached(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|(iface, mode, _)| (iface.as_str(), *mode))
    }

    /// One of the object's XDP programs ([`maps::PROGRAM`] or [`maps::PROGRAM_EMPTY`]), e.g.
    /// for `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    /// If the program is missing or not XDP.
    pub fn program_mut(&mut self, name: &'static str) -> Result<&mut Xdp, SensorError> {
        typed_program(&mut self.ebpf, name)
    }

    /// One of the object's TC programs ([`maps::PROGRAM_EGRESS`] or
    /// [`maps::PROGRAM_EGRESS_EMPTY`]), e.g. for `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    /// If the program is missing or not a TC classifier.
    pub fn egress_program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, SensorError> {
        typed_program(&mut self.ebpf, name)
    }

    /// Takes the flow table's shards out of the object, for the harvester.
    ///
    /// # Errors
    /// If they were already taken or have the wrong type.
    pub fn take_flows(&mut self) -> Result<Vec<FlowTable>, SensorError> {
        maps::FLOWS
            .iter()
            .map(|&name| {
                let map = self.ebpf.take_map(name).ok_or(SensorError::MissingMap { name })?;
                PerCpuHashMap::try_from(map).map_err(|source| SensorError::MapType { name, source })
            })
            .collect()
    }

    /// The sensor counters summed over CPUs and both hooks.
    ///
    /// # Errors
    /// If the counters map is missing or cannot be read.
    pub fn counters(&self) -> Result<Counters, SensorError> {
        self.counters_by_direction().map(|c| c.total())
    }

    /// The sensor counters of each hook, summed over CPUs.
    ///
    /// # Errors
    /// If the counters map is missing or cannot be read.
    pub fn counters_by_direction(&self) -> Result<DirectionCounters, SensorError> {
        let name = maps::COUNTERS;
        let map = self.ebpf.map(name).ok_or(SensorError::MissingMap { name })?;
        let array: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(map).map_err(|source| SensorError::MapType { name, source })?;
        sum_counters(&array).map_err(|source| SensorError::MapRead { name, source })
    }

    /// Access to the object's maps by name (blocklist, counters).
    #[must_use]
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Mutable access to the object's maps by name.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Program `name` of the object as its type `P` (XDP or TC classifier).
fn typed_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, SensorError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(SensorError::MissingProgram { name })?
        .try_into()
        .map_err(|source| SensorError::ProgramType { name, source })
}

/// The counters map's entries (one per hook) each summed over CPUs.
///
/// # Errors
/// If an entry cannot be read.
pub fn sum_counters<T: std::borrow::Borrow<aya::maps::MapData>>(
    array: &PerCpuArray<T, Counters>,
) -> Result<DirectionCounters, aya::maps::MapError> {
    let mut sums = DirectionCounters::default();
    for direction in Direction::ALL {
        let per_cpu = array.get(&(direction as u32), 0)?;
        for c in per_cpu.iter() {
            sums.0[direction as usize].add(c);
        }
    }
    Ok(sums)
}

/// In SKB mode the program runs after receive offload (GRO) has merged segments: say what that
/// does to the counts, and the fix.
fn warn_skb_mode(iface: &str) {
    warn!(
        iface,
        "XDP in SKB mode sees packets after receive offload: a GRO aggregate of up to 64 kB counts as one packet \
         (bytes stay right). For per-segment counts turn GRO off (`ethtool -K {iface} gro off`) or use native mode"
    );
}

/// Lifts `RLIMIT_MEMLOCK` for kernels that still charge BPF maps against it (before 5.11);
/// newer kernels account maps to the cgroup and ignore it.
fn raise_memlock() {
    use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK; fine on Linux 5.11+");
    }
}

/// Number of possible CPUs: the number of values in each per-CPU map entry.
///
/// # Panics
/// If `/sys/devices/system/cpu/possible` cannot be read.
#[must_use]
pub fn possible_cpus() -> usize {
    aya::util::nr_cpus().expect("reading /sys/devices/system/cpu/possible")
}

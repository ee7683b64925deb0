//! Batched and atomic map operations aya 0.14 does not wrap, through the `bpf(2)` syscall:
//! `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH` and
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, for per-CPU hash maps.
//!
//! A per-CPU value buffer holds, for each key, one value per possible CPU, each rounded up to
//! 8 bytes (the kernel's layout). The types used here are asserted to be multiples of 8.

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `bpf_attr` prefix of the given size, and every
    // pointer inside it refers to a live buffer of the size the kernel expects.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr).cast::<libc::c_void>(), size_of::<A>()) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn addr<T>(p: *const T) -> u64 {
    p as u64
}

/// Bytes of per-CPU values one [`PerCpuBatchReader`] buffers at most. A chunk holds one value
/// per possible CPU for each key, so the keys per call shrink as CPUs grow: 8192 keys of a
/// 128-byte value on a 64-CPU host would need 64 MiB (per reader; the harvest has one per
/// shard); 4 MiB is 512 keys there, and the full 8192 up to 4 CPUs.
pub const VALUE_BUFFER_BYTES: usize = 4 << 20;

/// Keys per `BPF_MAP_LOOKUP_BATCH` call for `cpus` values of `value_size` bytes each: at most
/// `chunk`, and at most what fits in [`VALUE_BUFFER_BYTES`] (at least one).
#[must_use]
pub fn keys_per_call(chunk: u32, cpus: usize, value_size: usize) -> u32 {
    let fit = VALUE_BUFFER_BYTES / (cpus.max(1) * value_size.max(1));
    chunk.min(u32::try_from(fit).unwrap_or(u32::MAX)).max(1)
}

/// Reads a per-CPU hash map in chunks with `BPF_MAP_LOOKUP_BATCH`, reusing its buffers.
pub struct PerCpuBatchReader<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    chunk: u32,
    cpus: usize,
    _kv: PhantomData<(K, V)>,
}

impl<K: Pod + Default, V: Pod + Default> PerCpuBatchReader<K, V> {
    /// A reader returning up to `chunk` keys per call (fewer on a host with many CPUs, see
    /// [`keys_per_call`]), for a system with `cpus` possible CPUs.
    ///
    /// # Panics
    /// If `V` is not a multiple of 8 bytes (the kernel would pad it and the layout would differ).
    #[must_use]
    pub fn new(chunk: u32, cpus: usize) -> Self {
        assert_eq!(size_of::<V>() % 8, 0, "per-CPU values must be a multiple of 8 bytes");
        let chunk = keys_per_call(chunk, cpus, size_of::<V>());
        let n = chunk as usize;
        Self { keys: vec![K::default(); n], values: vec![V::default(); n * cpus], chunk, cpus, _kv: PhantomData }
    }

    /// Calls `visit(key, per_cpu_values)` for every entry of the map, one chunk at a time.
    /// Returns the number of entries visited.
    ///
    /// # Errors
    /// The syscall's error, other than the `ENOENT` that marks the end of the map.
    pub fn for_each(&mut self, map: BorrowedFd<'_>, mut visit: impl FnMut(&K, &[V])) -> io::Result<usize> {
        let mut cursor: u32 = 0;
        let mut next: u32 = 0;
        let mut first = true;
        let mut total = 0;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { addr(&raw const cursor) },
                out_batch: addr(&raw mut next),
                keys: addr(self.keys.as_mut_ptr()),
                values: addr(self.values.as_mut_ptr()),
                count: self.chunk,
                map_fd: map.as_raw_fd().cast_unsigned(),
                ..BatchAttr::default()
            };
            let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let done = match result {
                Ok(()) => false,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) => return Err(e),
            };
            let n = attr.count as usize;
            for (i, key) in self.keys.iter().take(n).enumerate() {
                visit(key, &self.values[i * self.cpus..(i + 1) * self.cpus]);
            }
            total += n;
            if done {
                return Ok(total);
            }
            cursor = next;
            first = false;
        }
    }
}

/// Inserts or overwrites entries with `BPF_MAP_UPDATE_BATCH`. `values` holds one value per
/// possible CPU for each key.
///
/// # Errors
/// The syscall's error.
///
/// # Panics
/// If `values.len() != keys.len() * cpus`.
pub fn update_batch<K: Pod, V: Pod>(map: BorrowedFd<'_>, keys: &[K], values: &[V], cpus: usize) -> io::Result<()> {
    assert_eq!(values.len(), keys.len() * cpus, "one value per CPU per key");
    let mut attr = BatchAttr {
        keys: addr(keys.as_ptr()),
        values: addr(values.as_ptr()),
        count: u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        map_fd: map.as_raw_fd().cast_unsigned(),
        ..BatchAttr::default()
    };
    sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr)
}

/// Deletes `keys` with `BPF_MAP_DELETE_BATCH`; returns how many were deleted before any error.
///
/// # Errors
/// The syscall's error (`ENOENT` if a key was already gone; entries before it are deleted).
pub fn delete_batch<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<u32> {
    let mut attr = BatchAttr {
        keys: addr(keys.as_ptr()),
        count: u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        map_fd: map.as_raw_fd().cast_unsigned(),
        ..BatchAttr::default()
    };
    sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr).map(|()| attr.count)
}

/// Atomically reads and deletes one entry of a per-CPU hash map
/// (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, Linux 5.14+). `values` receives one value per CPU.
/// Returns `false` if the key was not there.
///
/// # Errors
/// The syscall's error other than `ENOENT`.
pub fn lookup_and_delete<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K, values: &mut [V]) -> io::Result<bool> {
    elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, map, key, values)
}

/// Reads one entry of a per-CPU hash map (`BPF_MAP_LOOKUP_ELEM`) into `values`, one per CPU.
/// Returns `false` if the key is not there.
///
/// # Errors
/// The syscall's error other than `ENOENT`.
pub fn lookup<K: Pod, V: Pod>(map: BorrowedFd<'_>, key: &K, values: &mut [V]) -> io::Result<bool> {
    elem(BPF_MAP_LOOKUP_ELEM, map, key, values)
}

fn elem<K: Pod, V: Pod>(cmd: libc::c_long, map: BorrowedFd<'_>, key: &K, values: &mut [V]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd().cast_unsigned(),
        key: addr(std::ptr::from_ref(key)),
        value: addr(values.as_mut_ptr()),
        ..ElemAttr::default()
    };
    match sys_bpf(cmd, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use agent_common::flow::{FlowKey, FlowStats};

    use super::*;

    #[test]
    fn value_buffers_do_not_grow_with_the_cpu_count() {
        let flow_value = size_of::<FlowStats>();
        assert_eq!(keys_per_call(8192, 2, flow_value), 8192);
        assert_eq!(keys_per_call(8192, 64, flow_value), 512);
        assert_eq!(keys_per_call(8192, 4096, 1 << 20), 1, "always at least one key");
        for cpus in [1, 2, 8, 64, 256, 1024] {
            let reader = PerCpuBatchReader::<FlowKey, FlowStats>::new(8192, cpus);
            let bytes = reader.values.len() * size_of::<FlowStats>();
            assert!(bytes <= VALUE_BUFFER_BYTES, "{cpus} CPUs: {bytes} bytes");
            assert_eq!(reader.keys.len(), reader.chunk as usize);
        }
    }
}

//! What this build expects of every pinned map, checked before pins are reused.
//!
//! aya reuses any map pinned under a path it is given, whatever its shape, and the harvest
//! sizes its buffers from this build's types: a pinned map of another layout (an older or newer
//! build, or a map someone else pinned there) would be read past its values. So before
//! reusing pins, every map's type, key and value size, capacity and flags are compared with
//! what this build would create (`BPF_OBJ_GET_INFO_BY_FD`, through aya's `MapInfo`), and the
//! layout version the creating build wrote into [`maps::LAYOUT`] with [`maps::LAYOUT_VERSION`].
//! Any difference refuses the pins with one line naming the map; nothing is touched.

use std::path::{Path, PathBuf};

use agent_common::{
    blocklist::BlockRule,
    counters::{Counters, Direction},
    flow::{FlowKey, FlowStats},
    maps,
};
use aya::maps::{Array, Map, MapData, MapInfo, MapType};

/// The shape of one map as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    /// `None`: any capacity (the control commands do not know the agent's flow capacity).
    pub max_entries: Option<u32>,
    pub flags: u32,
}

/// Why pinned maps cannot be reused.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "pinned map {path} has {what} {found}, this build expects {expected}; it was made by another build of vigil \
         (or something else): run `vigil detach` to remove the old sensor, then start again"
    )]
    Mismatch { path: PathBuf, what: &'static str, found: String, expected: String },
    #[error(
        "pinned map {path} is missing while other maps of a sensor are pinned beside it; run `vigil detach` to remove \
         the old sensor, then start again"
    )]
    Missing { path: PathBuf },
    #[error("pinned map {path} cannot be inspected: {source}; run `vigil detach` to remove the old sensor")]
    Unreadable { path: PathBuf, source: aya::maps::MapError },
}

const fn size_of<T>() -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "map keys and values are a few hundred bytes")]
    let size = core::mem::size_of::<T>() as u32;
    size
}

/// LPM trie keys are the prefix length (`u32`) followed by the address bytes.
const LPM_PREFIX_LEN: u32 = 4;

/// What this build creates for map `name`, or `None` for a name it does not pin. Flow-table
/// shards hold `flow_capacity / FLOW_SHARDS` (rounded up) entries each.
#[must_use]
pub fn expected(name: &str, flow_capacity: Option<u32>) -> Option<MapShape> {
    let shards = u32::try_from(maps::FLOW_SHARDS).unwrap_or(1);
    let shape = match name {
        n if maps::FLOWS.contains(&n) => MapShape {
            map_type: MapType::LruPerCpuHash,
            key_size: size_of::<FlowKey>(),
            value_size: size_of::<FlowStats>(),
            max_entries: flow_capacity.map(|c| c.div_ceil(shards)),
            flags: 0,
        },
        maps::COUNTERS => MapShape {
            map_type: MapType::PerCpuArray,
            key_size: 4,
            value_size: size_of::<Counters>(),
            max_entries: Some(Direction::ENTRIES),
            flags: 0,
        },
        maps::BLOCK_V4 | maps::BLOCK_V6 => MapShape {
            map_type: MapType::LpmTrie,
            key_size: LPM_PREFIX_LEN + if name == maps::BLOCK_V4 { 4 } else { 16 },
            value_size: size_of::<BlockRule>(),
            max_entries: Some(maps::BLOCKLIST_CAPACITY),
            flags: maps::BPF_F_NO_PREALLOC,
        },
        maps::LAYOUT => {
            MapShape { map_type: MapType::Array, key_size: 4, value_size: 4, max_entries: Some(1), flags: 0 }
        }
        _ => return None,
    };
    Some(shape)
}

/// Compares the kernel's view of a map with what this build expects.
///
/// # Errors
/// [`LayoutError::Mismatch`] naming the first property that differs.
pub fn compare(path: &Path, found: &MapShape, want: &MapShape) -> Result<(), LayoutError> {
    let mismatch = |what, found: String, expected: String| {
        Err(LayoutError::Mismatch { path: path.to_owned(), what, found, expected })
    };
    if found.map_type != want.map_type {
        return mismatch("type", format!("{:?}", found.map_type), format!("{:?}", want.map_type));
    }
    if found.key_size != want.key_size {
        return mismatch("key size", found.key_size.to_string(), want.key_size.to_string());
    }
    if found.value_size != want.value_size {
        return mismatch("value size", found.value_size.to_string(), want.value_size.to_string());
    }
    if let (Some(f), Some(w)) = (found.max_entries, want.max_entries)
        && f != w
    {
        let why = if found.map_type == MapType::LruPerCpuHash { " (from the flow capacity setting)" } else { "" };
        return mismatch("capacity", format!("{f} entries"), format!("{w} entries{why}"));
    }
    if found.flags != want.flags {
        return mismatch("flags", format!("{:#x}", found.flags), format!("{:#x}", want.flags));
    }
    Ok(())
}

fn shape_of(path: &Path) -> Result<MapShape, LayoutError> {
    let unreadable = |source| LayoutError::Unreadable { path: path.to_owned(), source };
    let info = MapInfo::from_pin(path).map_err(unreadable)?;
    Ok(MapShape {
        map_type: info.map_type().map_err(unreadable)?,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: Some(info.max_entries()),
        flags: info.map_flags(),
    })
}

/// Whether anything of a sensor is pinned in `dir` (a map or the link).
#[must_use]
pub fn anything_pinned(dir: &Path, names: &[&str], link: &str) -> bool {
    names.iter().chain(std::iter::once(&link)).any(|n| dir.join(n).exists())
}

/// Checks every pinned map in `dir` against this build, and the layout version written by
/// the build that created them. Does nothing when nothing is pinned there.
///
/// # Errors
/// [`LayoutError`] for the first map that is missing, of another shape, or of another
/// layout version.
///
/// # Panics
/// If `names` holds a name [`expected`] does not know (a programming error).
pub fn check(dir: &Path, names: &[&str], link: &str, flow_capacity: Option<u32>) -> Result<(), LayoutError> {
    if !anything_pinned(dir, names, link) {
        return Ok(());
    }
    // Shapes first: a map of another shape says more about what happened than one missing.
    for &name in names {
        let path = dir.join(name);
        if path.exists() {
            let want = expected(name, flow_capacity).expect("every pinned name has an expected shape");
            compare(&path, &shape_of(&path)?, &want)?;
        }
    }
    if let Some(path) = names.iter().map(|n| dir.join(n)).find(|p| !p.exists()) {
        return Err(LayoutError::Missing { path });
    }
    let path = dir.join(maps::LAYOUT);
    let version = read_version(&path).map_err(|source| LayoutError::Unreadable { path: path.clone(), source })?;
    if version != maps::LAYOUT_VERSION {
        return Err(LayoutError::Mismatch {
            path,
            what: "layout version",
            found: version.to_string(),
            expected: maps::LAYOUT_VERSION.to_string(),
        });
    }
    Ok(())
}

fn read_version(path: &Path) -> Result<u32, aya::maps::MapError> {
    let map = Map::from_map_data(MapData::from_pin(path)?)?;
    let array: Array<MapData, u32> = Array::try_from(map)?;
    array.get(&0, 0)
}

/// Records this build's layout version in a sensor's freshly created [`maps::LAYOUT`] map.
///
/// # Errors
/// If the map is missing or the write fails.
pub fn write_version(ebpf: &mut aya::Ebpf) -> Result<(), aya::maps::MapError> {
    let map =
        ebpf.map_mut(maps::LAYOUT).ok_or_else(|| aya::maps::MapError::InvalidName { name: maps::LAYOUT.into() })?;
    let mut array: Array<&mut MapData, u32> = Array::try_from(map)?;
    array.set(0, maps::LAYOUT_VERSION, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_has_a_shape_and_sizes_follow_the_types() {
        for name in [maps::FLOWS[0], maps::FLOWS[1], maps::COUNTERS, maps::BLOCK_V4, maps::BLOCK_V6, maps::LAYOUT] {
            assert!(expected(name, Some(10)).is_some(), "{name}");
        }
        assert_eq!(expected("OTHER", None), None);
        let flows = expected(maps::FLOWS[0], Some(65_537)).unwrap();
        assert_eq!((flows.key_size, flows.value_size, flows.max_entries), (40, 128, Some(32_769)));
        assert_eq!(expected(maps::BLOCK_V6, None).unwrap().key_size, 20);
    }

    #[test]
    fn any_difference_is_named() {
        let want = expected(maps::COUNTERS, None).unwrap();
        let path = Path::new("/sys/fs/bpf/vigil/VIGIL_COUNTERS");
        assert!(compare(path, &want, &want).is_ok());
        let bigger = MapShape { value_size: want.value_size + 8, ..want };
        let err = compare(path, &bigger, &want).unwrap_err().to_string();
        assert!(err.contains("VIGIL_COUNTERS") && err.contains("value size") && err.contains("vigil detach"), "{err}");
        let other_type = MapShape { map_type: MapType::Array, ..want };
        assert!(compare(path, &other_type, &want).unwrap_err().to_string().contains("type"));
        let flows = expected(maps::FLOWS[0], Some(1000)).unwrap();
        let smaller = MapShape { max_entries: Some(10), ..flows };
        assert!(compare(path, &smaller, &flows).unwrap_err().to_string().contains("capacity"));
        let any = expected(maps::FLOWS[0], None).unwrap();
        assert!(compare(path, &smaller, &any).is_ok(), "control commands accept any capacity");
        let flagged = MapShape { flags: 1, ..want };
        assert!(compare(path, &flagged, &want).unwrap_err().to_string().contains("flags"));
    }
}

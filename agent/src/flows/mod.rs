//! Flow records: harvesting them from the kernel table and writing them out.

pub mod biflow;
pub mod harvest;
pub mod offline;
pub mod output;
pub mod record;

pub use harvest::{
    DEFAULT_ACTIVE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_INTERVAL, HarvestConfig, HarvestReport, Harvester,
};
pub use record::{EndReason, FlowRecord};

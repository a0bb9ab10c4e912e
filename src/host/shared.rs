//! Envoy's shared data as the core's [`SharedStore`]: one map per VM id, shared by the workers.

use super::abi::{self, CAS_MISMATCH};
use crate::store::{SharedStore, StoreError};

pub(super) struct EnvoyShared;

impl SharedStore for EnvoyShared {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        abi::get_shared_data(key).map_err(|status| StoreError::Unavailable(format!("get_shared_data: {status:?}")))
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match abi::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(CAS_MISMATCH) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Unavailable(format!("set_shared_data: {status:?}"))),
        }
    }
}

//! Envoy's shared data as the core's [`SharedStore`]: one map per VM id, shared by the workers.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

use crate::store::{SharedStore, StoreError};

pub(super) struct EnvoyShared;

impl SharedStore for EnvoyShared {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Ok(Some((value, cas))),
            Ok(_) | Err(Status::NotFound) => Ok(None),
            Err(status) => Err(StoreError::Unavailable(format!("get_shared_data: {status:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(StoreError::Unavailable(format!("set_shared_data: {status:?}"))),
        }
    }
}

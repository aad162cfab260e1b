//! The device's error record. Kernels that follow indices held in device memory (ids the host
//! never saw, such as a beam search's chosen rows) do not follow one outside its range: they
//! skip it and report the first such index in a record of ERROR_RECORD_WORDS i32s on the
//! device, {code, position, index, limit} (`report_bad_index` in kernels/common.cuh). Nothing
//! is read back while work is enqueued; `CudaDevice::check_errors` reads the record (one small
//! copy, after the stream's work), turns it into `Error::Index` and clears it.

use super::kernels::codes::{
    ERROR_EMBEDDING, ERROR_EMBEDDING_BACKWARD, ERROR_INDEX_SELECT, ERROR_INDEX_SELECT_BACKWARD,
    ERROR_RECORD_WORDS,
};
use crate::error::{Error, Result};

/// i32 words of the record.
pub(crate) const RECORD_WORDS: usize = ERROR_RECORD_WORDS as usize;

/// The tensor a code (ERROR_* of kernels/codes.cuh) names.
fn source(code: i32) -> Option<&'static str> {
    match code {
        ERROR_INDEX_SELECT => Some("index_select ids"),
        ERROR_INDEX_SELECT_BACKWARD => Some("index_select_backward ids"),
        ERROR_EMBEDDING => Some("embedding ids"),
        ERROR_EMBEDDING_BACKWARD => Some("embedding_backward ids"),
        _ => None,
    }
}

/// The error a record read back holds; Ok for a clear record.
pub(crate) fn decode(record: &[i32]) -> Result<()> {
    let &[code, position, value, limit] = record else {
        return Err(Error::Kernel {
            kernel: "error record".into(),
            reason: format!("{} words read back, expected {RECORD_WORDS}", record.len()),
        });
    };
    if code == 0 {
        return Ok(());
    }
    let Some(tensor) = source(code) else {
        return Err(Error::Kernel {
            kernel: "error record".into(),
            reason: format!("unknown code {code}"),
        });
    };
    Err(Error::Index {
        tensor: tensor.into(),
        position: usize::try_from(position).unwrap_or(0),
        value: value.into(),
        limit: usize::try_from(limit).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_to_typed_errors() {
        assert!(decode(&[0, 0, 0, 0]).is_ok());
        let e = decode(&[ERROR_INDEX_SELECT, 3, -2, 7]).unwrap_err();
        assert_eq!(e.to_string(), "index_select ids[3] = -2 is outside 0..7");
        assert!(matches!(
            decode(&[ERROR_INDEX_SELECT_BACKWARD, 0, 9, 9]),
            Err(Error::Index {
                value: 9,
                limit: 9,
                ..
            })
        ));
        let e = decode(&[ERROR_EMBEDDING_BACKWARD, 2, -1, 5]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "embedding_backward ids[2] = -1 is outside 0..5"
        );
        assert!(matches!(decode(&[99, 0, 0, 0]), Err(Error::Kernel { .. })));
        assert!(matches!(decode(&[1, 2]), Err(Error::Kernel { .. })));
    }
}

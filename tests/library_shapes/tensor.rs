//! The Tensor part of the sweep: constructors, `reshape` and conversions over every shape, and
//! shapes whose element count overflows.

use crate::common;
use crate::harness::Sweep;
use crate::shapes::{dims, shapes, shared, tensor, HUGE, MAX};
use fused_rnn::{DType, Device, Tensor};

/// Shapes whose element count overflows usize (some only in one order of multiplication).
const OVERFLOWING: [&[usize]; 7] = [
    &[HUGE, HUGE, 0],
    &[MAX, 2],
    &[2, MAX],
    &[MAX, MAX, 0],
    &[1 << 32, 1 << 32],
    &[HUGE, HUGE, HUGE],
    &[MAX],
];

pub(crate) fn check_tensor(sweep: &mut Sweep) {
    let all: Vec<&[usize]> = shapes()
        .iter()
        .map(Vec::as_slice)
        .chain(OVERFLOWING)
        .collect();
    for shape in &all {
        let s = || dims(shape);
        for len in [0, 1, 3] {
            let values = common::random(len, 1.0, len as u64 + 1);
            sweep.call(
                || format!("Tensor::from_vec({len} values, {})", s()),
                || Tensor::from_vec(values.clone(), shape),
            );
            for dtype in [DType::F16, DType::BF16] {
                sweep.call(
                    || format!("Tensor::from_f32({len} values, {}, {dtype})", s()),
                    || Tensor::from_f32(&values, shape, dtype),
                );
            }
            let flat = Tensor::from_vec(values, &[len]).unwrap();
            sweep.call(
                || format!("Tensor [{len}].reshape({})", s()),
                || flat.reshape(shape),
            );
        }
    }
    for shape in shapes() {
        let s = || dims(shape);
        sweep.call(
            || format!("Tensor {}.reshape([0, 2^40, 2^40])", s()),
            || tensor(shape).reshape(&[0, HUGE, HUGE]),
        );
        for dtype in DType::ALL {
            sweep.call(
                || format!("Tensor {}.to(cpu, {dtype})", s()),
                || shared(shape).to(&Device::Cpu, dtype)?.to_vec_f32(),
            );
        }
    }
}

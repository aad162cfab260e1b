//! The CPU's f32 training path (the default) against its f64 reference (`Precision::F64`):
//! every output and gradient of every cell, on odd sizes, with variable lengths, both
//! directions, several layers, projections, batch_first, initial states and without biases,
//! within 1e-4 of each tensor's largest magnitude.

mod common;

use common::layers::{inputs, upstream, Case, Kind, Layer};
use fused_rnn::{Algo, DType, Device, Nonlinearity, Precision};

/// A case: kind, I, H, layers, bidirectional, batch_first, T, B, lengths, h0, bias.
type Row = (
    Kind,
    usize,
    usize,
    usize,
    bool,
    bool,
    usize,
    usize,
    bool,
    bool,
    bool,
);

const TANH: Kind = Kind::Rnn(Nonlinearity::Tanh);
const RELU: Kind = Kind::Rnn(Nonlinearity::Relu);
const LSTM: Kind = Kind::Lstm { proj: 0 };

const ROWS: &[Row] = &[
    (TANH, 7, 33, 3, true, false, 13, 5, true, true, true),
    (RELU, 33, 33, 1, true, true, 17, 7, true, false, true),
    (LSTM, 1, 1, 1, false, false, 7, 1, false, false, true),
    (LSTM, 7, 33, 2, true, false, 13, 5, true, true, true),
    (
        Kind::Lstm { proj: 17 },
        9,
        33,
        2,
        true,
        true,
        11,
        6,
        true,
        true,
        true,
    ),
    (
        Kind::Lstm { proj: 1 },
        4,
        7,
        1,
        false,
        false,
        5,
        3,
        true,
        true,
        false,
    ),
    (Kind::Gru, 7, 33, 2, true, false, 13, 5, true, true, true),
    (Kind::Gru, 5, 17, 1, false, true, 9, 4, true, false, false),
    // Long sums: every weight and bias gradient adds T·B = 1600 rows.
    (LSTM, 64, 129, 1, false, false, 100, 16, true, false, true),
    (
        Kind::Gru,
        64,
        129,
        1,
        true,
        false,
        100,
        16,
        false,
        true,
        true,
    ),
];

#[test]
fn f32_training_matches_the_f64_reference_for_every_cell_and_option() {
    const TOL: f32 = 1e-4;
    let cpu = Device::Cpu;
    let mut failures = Vec::new();
    for (k, &(kind, i, h, layers, bidirectional, batch_first, t, b, lengths, h0, bias)) in
        ROWS.iter().enumerate()
    {
        let c = Case {
            kind,
            i,
            h,
            layers,
            bidirectional,
            batch_first,
            t,
            b,
            lengths,
            h0,
            bias,
        };
        let seed = 900 + 10 * k as u64;
        let fast = Layer::random(&c, seed);
        let reference = fast
            .to(&cpu, DType::F32, Algo::Auto)
            .with_precision(Precision::F64);
        let inputs = inputs(&c, seed + 1, c.h0, c.lengths());
        // Half the cases leave out h_n's and c_n's gradients (zeros).
        let upstream = upstream(&c, seed + 2, k % 2 == 0);
        let got = fast.train(&inputs, &upstream);
        let want = reference.train(&inputs, &upstream);
        let names: Vec<&String> = got.iter().map(|(n, _)| n).collect();
        assert_eq!(names, want.iter().map(|(n, _)| n).collect::<Vec<_>>());
        let mut differs = false;
        for ((name, g), (_, w)) in got.iter().zip(&want) {
            failures.extend(common::mismatch(&format!("{c:?}: {name}"), g, w, TOL));
            differs |= g != w;
        }
        // Bit-identical results would mean that both ran the same path.
        assert!(differs, "{c:?}: the f32 and f64 paths agree to the bit");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Softmax cross-entropy with masked rows, fused with its gradient, in place:
//   loss[r]      = logsumexp(logits[r, :]) − logits[r, target[r]]          (0 for masked rows)
//   logits[r, i] ← scale · (softmax(logits[r, :])[i] − [i = target[r]])   (0 for masked rows)
// target 0xFFFFFFFF masks a row (prompt tokens, padding). scale is 1/(tokens counted in the
// loss). One invocation per row, three passes over the vocabulary.

const MASKED: u32 = 0xFFFFFFFFu;

struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;

@compute @workgroup_size(64)
fn cross_entropy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + (gid.y + gid.z * nwg.y) * nwg.x * 64u;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.vocab;
    let t = targets[row];
    if (t == MASKED) {
        for (var i = 0u; i < p.vocab; i++) {
            logits[base + i] = 0.0;
        }
        loss[row] = 0.0;
        return;
    }
    var m = logits[base];
    for (var i = 1u; i < p.vocab; i++) {
        m = max(m, logits[base + i]);
    }
    var z = 0.0;
    for (var i = 0u; i < p.vocab; i++) {
        z += exp(logits[base + i] - m);
    }
    loss[row] = m + log(z) - logits[base + min(t, p.vocab - 1u)];
    let inv = 1.0 / z;
    for (var i = 0u; i < p.vocab; i++) {
        var g = exp(logits[base + i] - m) * inv;
        if (i == t) {
            g -= 1.0;
        }
        logits[base + i] = g * p.scale;
    }
}

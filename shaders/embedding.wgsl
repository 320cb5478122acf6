// Row gather: out[i, :] = table[index[i], :], table [V, H] f32 or (F16) packed halves.
// Used for the token embedding and to pick the rows whose logits are wanted.
// Row scatter (SCATTER): out[index[i], :] = table[i, :] (f32; indices distinct): puts a chunk of
// rows back in place. One invocation per (row, element).

struct Params {
    rows: u32,
    width: u32,
    table_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
#if F16
@group(0) @binding(1) var<storage, read> table: array<u32>;
#else
@group(0) @binding(1) var<storage, read> table: array<f32>;
#endif
@group(0) @binding(2) var<storage, read> index: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

#if SCATTER
@compute @workgroup_size(64)
fn scatter(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (col >= p.width || row >= p.rows) {
        return;
    }
    out[min(index[row], p.table_rows - 1u) * p.width + col] = table[row * p.width + col];
}
#else
@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = gid.x;
    let row = gid.y + gid.z * nwg.y;
    if (col >= p.width || row >= p.rows) {
        return;
    }
    // Indices are checked on the host; the clamp keeps a bad one inside the table.
    let src = min(index[row], p.table_rows - 1u) * p.width + col;
#if F16
    let pair = unpack2x16float(table[src / 2u]);
    out[row * p.width + col] = select(pair.x, pair.y, (src & 1u) == 1u);
#else
    out[row * p.width + col] = table[src];
#endif
}
#endif

//! WGSL sources and a small preprocessor. Kernel variants differ in constants (tile sizes, subgroup
//! size), in optional parts (an f16 weight path, a LoRA epilogue) and in unrolled blocks: the
//! texture kernels must name subgroup lanes as constants (`subgroupBroadcast` takes a constant
//! lane), and LLVM-based drivers keep per-row accumulators in registers only when they are
//! separate variables. So a variant is the source plus a set of defines:
//!
//! - every define `NAME = v` becomes `const NAME: u32 = vu;` at the top of the module;
//! - `#if NAME` / `#if !NAME` / `#else` / `#endif` keep or drop lines (NAME true when nonzero);
//! - `#repeat VAR COUNT` ... `#end` emits its lines COUNT times (COUNT a number or a define),
//!   with `{VAR}` replaced by 0, 1, ... (repeats nest).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The WGSL source of shader `name`: the file compiled into the binary or, for kernel work without
/// a rebuild, the file of the same name in `$LORAFUSE_SHADER_DIR` where that is set and holds one
/// (read once a process, and part of `sources_hash`, so the tuner re-times edited kernels).
pub fn source(name: &str) -> Option<&'static str> {
    static OVERRIDES: OnceLock<BTreeMap<&'static str, &'static str>> = OnceLock::new();
    let overrides = OVERRIDES.get_or_init(|| {
        let Some(dir) = std::env::var_os("LORAFUSE_SHADER_DIR") else { return BTreeMap::new() };
        let dir = std::path::PathBuf::from(dir);
        let found: BTreeMap<&'static str, &'static str> = (ALL.iter())
            .filter_map(|&n| {
                let text = std::fs::read_to_string(dir.join(format!("{n}.wgsl"))).ok()?;
                Some((n, &*Box::leak(text.into_boxed_str())))
            })
            .collect();
        let names: Vec<&str> = found.keys().copied().collect();
        eprintln!(
            "shaders from {}: {}",
            dir.display(),
            if names.is_empty() { "none found".into() } else { names.join(", ") }
        );
        found
    });
    overrides.get(name).copied().or_else(|| builtin(name))
}

fn builtin(name: &str) -> Option<&'static str> {
    Some(match name {
        "matmul_texture" => include_str!("../../shaders/matmul_texture.wgsl"),
        "matmul_blocked" => include_str!("../../shaders/matmul_blocked.wgsl"),
        "matmul_tiled" => include_str!("../../shaders/matmul_tiled.wgsl"),
        "pack" => include_str!("../../shaders/pack.wgsl"),
        "lora_merge" => include_str!("../../shaders/lora_merge.wgsl"),
        "ceiling" => include_str!("../../shaders/ceiling.wgsl"),
        "embedding" => include_str!("../../shaders/embedding.wgsl"),
        "rmsnorm" => include_str!("../../shaders/rmsnorm.wgsl"),
        "elementwise" => include_str!("../../shaders/elementwise.wgsl"),
        "rope" => include_str!("../../shaders/rope.wgsl"),
        "attention" => include_str!("../../shaders/attention.wgsl"),
        "attention_flash" => include_str!("../../shaders/attention_flash.wgsl"),
        "cross_entropy" => include_str!("../../shaders/cross_entropy.wgsl"),
        "optimizer" => include_str!("../../shaders/optimizer.wgsl"),
        "dropout" => include_str!("../../shaders/dropout.wgsl"),
        _ => return None,
    })
}

/// Every shader file, for `sources_hash`.
const ALL: [&str; 15] = [
    "matmul_texture",
    "matmul_blocked",
    "matmul_tiled",
    "pack",
    "lora_merge",
    "ceiling",
    "embedding",
    "rmsnorm",
    "elementwise",
    "rope",
    "attention",
    "attention_flash",
    "cross_entropy",
    "optimizer",
    "dropout",
];

/// A fingerprint of the shader sources (FNV-1a), so choices timed for other kernels (a cache
/// written by an older build) are not trusted.
pub fn sources_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for name in ALL {
        for b in source(name).unwrap_or("").bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

pub type Defines = BTreeMap<&'static str, u32>;

enum Node<'a> {
    Line(&'a str),
    If { name: &'a str, negate: bool, then: Vec<Node<'a>>, otherwise: Vec<Node<'a>> },
    Repeat { var: &'a str, count: &'a str, body: Vec<Node<'a>> },
}

/// Parsed nodes, and the directive that closed the block (with its line).
type Block<'a> = (Vec<Node<'a>>, Option<(&'a str, usize)>);

fn err(name: &str, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::Shader { name: name.into(), message: format!("line {}: {msg}", line + 1) }
}

/// Parses lines from `*pos` up to a closing directive, returning the nodes and the directive.
fn parse_block<'a>(name: &str, lines: &[&'a str], pos: &mut usize) -> Result<Block<'a>> {
    let mut nodes = Vec::new();
    while *pos < lines.len() {
        let at = *pos;
        let line = lines[at];
        let t = line.trim_start();
        *pos += 1;
        if let Some(rest) = t.strip_prefix("#if ") {
            let rest = rest.trim();
            let (negate, cond) = match rest.strip_prefix('!') {
                Some(c) => (true, c.trim()),
                None => (false, rest),
            };
            let (then, close) = parse_block(name, lines, pos)?;
            let otherwise = match close {
                Some(("#else", _)) => match parse_block(name, lines, pos)? {
                    (nodes, Some(("#endif", _))) => nodes,
                    _ => return Err(err(name, at, "#else without #endif")),
                },
                Some(("#endif", _)) => Vec::new(),
                _ => return Err(err(name, at, "#if without #endif")),
            };
            nodes.push(Node::If { name: cond, negate, then, otherwise });
        } else if let Some(rest) = t.strip_prefix("#repeat ") {
            let mut parts = rest.split_whitespace();
            let (Some(var), Some(count), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err(name, at, "expected `#repeat VAR COUNT`"));
            };
            let (body, close) = parse_block(name, lines, pos)?;
            if !matches!(close, Some(("#end", _))) {
                return Err(err(name, at, "#repeat without #end"));
            }
            nodes.push(Node::Repeat { var, count, body });
        } else if t.starts_with("#else") || t.starts_with("#endif") || t.starts_with("#end") {
            let word = t.split_whitespace().next().unwrap_or("");
            return Ok((nodes, Some((word, at))));
        } else if t.starts_with('#') {
            return Err(err(name, at, format!("unknown directive '{t}'")));
        } else {
            nodes.push(Node::Line(line));
        }
    }
    Ok((nodes, None))
}

fn substitute(line: &str, vars: &[(&str, u32)]) -> String {
    let mut out = line.to_string();
    for (var, value) in vars.iter().rev() {
        out = out.replace(&format!("{{{var}}}"), &value.to_string());
    }
    out
}

fn emit(name: &str, nodes: &[Node], defines: &Defines, vars: &mut Vec<(String, u32)>, out: &mut String) -> Result<()> {
    for node in nodes {
        match node {
            Node::Line(l) => {
                let v: Vec<(&str, u32)> = vars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                out.push_str(&substitute(l, &v));
                out.push('\n');
            }
            Node::If { name: cond, negate, then, otherwise } => {
                let value = defines.get(cond).copied().unwrap_or(0) != 0;
                let branch = if value != *negate { then } else { otherwise };
                emit(name, branch, defines, vars, out)?;
            }
            Node::Repeat { var, count, body } => {
                let n = match count.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => *defines.get(count).ok_or_else(|| Error::Shader {
                        name: name.into(),
                        message: format!("#repeat count '{count}' is neither a number nor a define"),
                    })?,
                };
                for i in 0..n {
                    vars.push((var.to_string(), i));
                    emit(name, body, defines, vars, out)?;
                    vars.pop();
                }
            }
        }
    }
    Ok(())
}

/// Expands `text` (the shader `name`) for `defines`.
pub fn preprocess(name: &str, text: &str, defines: &Defines) -> Result<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut pos = 0;
    let (nodes, close) = parse_block(name, &lines, &mut pos)?;
    if let Some((word, at)) = close {
        return Err(err(name, at, format!("unmatched {word}")));
    }
    let mut out = String::with_capacity(text.len() * 2);
    for (k, v) in defines {
        out.push_str(&format!("const {k}: u32 = {v}u;\n"));
    }
    emit(name, &nodes, defines, &mut Vec::new(), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditionals_and_repeats_expand() {
        let src =
            "#if A\na\n#else\nnot_a\n#endif\n#if !B\nnot_b\n#endif\n#repeat i N\n#repeat j 2\nx{i}_{j}\n#end\n#end\n";
        let d: Defines = [("A", 1), ("N", 2)].into_iter().collect();
        let out = preprocess("t", src, &d).unwrap();
        let body: Vec<&str> = out.lines().filter(|l| !l.starts_with("const")).collect();
        assert_eq!(body, ["a", "not_b", "x0_0", "x0_1", "x1_0", "x1_1"]);
        assert!(out.contains("const A: u32 = 1u;"));
    }

    #[test]
    fn every_shader_is_listed() {
        assert!(ALL.iter().all(|n| source(n).is_some()));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let files = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(files, ALL.len(), "a shader file is missing from shader::ALL");
    }

    #[test]
    fn unbalanced_directives_are_errors() {
        let d = Defines::new();
        assert!(preprocess("t", "#if A\nx\n", &d).is_err());
        assert!(preprocess("t", "x\n#endif\n", &d).is_err());
        assert!(preprocess("t", "#repeat i Q\nx\n#end\n", &d).is_err());
        assert!(preprocess("t", "#pragma x\n", &d).is_err());
    }
}

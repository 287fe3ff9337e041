//! The comparison with the C program `examples/bench-c/uffd-copy.c`.

use std::process::Command;

use crate::cli::{Config, Pin};

/// Builds the C program and runs it and the `copy` scenario alternately.
pub fn compare_c(cfg: &Config) -> Result<(), String> {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/bench-c/uffd-copy.c");
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = exe.with_file_name("uffd-copy-c");
    let st = Command::new("cc")
        .args(["-O2", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .map_err(|e| format!("running cc: {e}"))?;
    if !st.success() {
        return Err(format!("cc -O2 {src} failed: {st}"));
    }
    let mut args = vec!["-n".to_string(), cfg.pages.to_string()];
    if cfg.write {
        args.extend(["-a".into(), "write".into()]);
    }
    match cfg.pin {
        Pin::None => {}
        Pin::Same => args.extend(["-p".into(), "same".into()]),
        Pin::Split => args.extend(["-p".into(), "split".into()]),
    }
    if cfg.spin {
        args.push("-s".into());
    }
    // Both sides run as fresh processes with the same arguments, in alternating order, so
    // neither inherits the other's address-space history or always goes first.
    let run_one = |prog: &std::path::Path, extra: &[&str]| -> Result<f64, String> {
        let o = Command::new(prog)
            .args(&args)
            .args(extra)
            .output()
            .map_err(|e| format!("running {}: {e}", prog.display()))?;
        let text = String::from_utf8_lossy(&o.stdout);
        if !o.status.success() || !text.contains("verify=ok") {
            return Err(format!(
                "{} failed ({}): {text}{}",
                prog.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        text.split_whitespace()
            .find_map(|f| f.strip_prefix("ns_per_fault="))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("no ns_per_fault in {text:?}"))
    };
    let (mut rust, mut c) = (Vec::new(), Vec::new());
    for round in 0..cfg.compare_rounds {
        if round % 2 == 0 {
            rust.push(run_one(&exe, &["copy"])?);
            c.push(run_one(&out, &[])?);
        } else {
            c.push(run_one(&out, &[])?);
            rust.push(run_one(&exe, &["copy"])?);
        }
    }
    // Paired ratios cancel slow drift of the host; minima estimate the cost without
    // scheduling noise, which on this VM is far larger than the library's share.
    let mut paired: Vec<f64> = rust.iter().zip(&c).map(|(r, c)| r / c).collect();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, cc, pr) = (med(&mut rust), med(&mut c), med(&mut paired));
    println!(
        "compare=copy rounds={} rust_ns_per_fault={r:.1} c_ns_per_fault={cc:.1} ratio={:.4} \
         paired_ratio={pr:.4} rust_min={:.1} c_min={:.1} min_ratio={:.4}",
        cfg.compare_rounds,
        r / cc,
        rust[0],
        c[0],
        rust[0] / c[0]
    );
    Ok(())
}

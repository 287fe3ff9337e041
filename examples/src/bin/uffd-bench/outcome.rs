//! One scenario's figures and how they are printed.

use crate::mem::PAGE;

/// One scenario's figures.
pub struct Outcome {
    /// The scenario.
    pub name: &'static str,
    /// Pages of the scenario's range.
    pub pages: usize,
    /// Fault messages the handler received (or, for `wp-async`, write faults the kernel
    /// resolved itself).
    pub faults: usize,
    /// Timed nanoseconds.
    pub ns: u128,
    /// Pages the timed span made present (the divisor of `ns_per_page`).
    pub units: usize,
    /// Scenario-specific `key=value` figures printed after the common ones.
    pub extra: Vec<(&'static str, String)>,
}

impl Outcome {
    /// The timed span per fault message, `None` when nothing faulted.
    fn ns_per_fault(&self) -> Option<f64> {
        (self.faults > 0).then(|| self.ns as f64 / self.faults as f64)
    }

    /// The timed span per page made present.
    fn ns_per_page(&self) -> f64 {
        self.ns as f64 / self.units.max(1) as f64
    }

    /// Prints the line (or JSON object) of this scenario.
    pub fn print(&self, json: bool) {
        let per_page = self.ns_per_page();
        let gbps = (self.units * PAGE) as f64 / self.ns.max(1) as f64;
        let per_fault = |none: &str| {
            self.ns_per_fault()
                .map_or_else(|| none.to_string(), |ns| format!("{ns:.1}"))
        };
        if json {
            let mut s = format!(
                "{{\"scenario\":\"{}\",\"pages\":{},\"faults\":{},\"ns_per_fault\":{},\"ns_per_page\":{per_page:.1},\"gbps\":{gbps:.3},\"verify\":\"ok\"",
                self.name, self.pages, self.faults, per_fault("null")
            );
            for (k, v) in &self.extra {
                s.push_str(&format!(",\"{k}\":{v}"));
            }
            println!("{s}}}");
        } else {
            let mut s = format!(
                "scenario={} pages={} faults={} ns_per_fault={} ns_per_page={per_page:.1} \
                 gbps={gbps:.3} verify=ok",
                self.name,
                self.pages,
                self.faults,
                per_fault("-")
            );
            for (k, v) in &self.extra {
                s.push_str(&format!(" {k}={v}"));
            }
            println!("{s}");
        }
    }
}

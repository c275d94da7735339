//! CRI `LinuxContainerResources` → OCI `LinuxResources` JSON, as `runc update --resources`
//! takes it. Pure.

use k8s_cri::v1 as cri;
use serde_json::{json, Map, Value};

/// The OCI resources object; fields left at zero/empty are omitted (unchanged by update).
pub fn resources_json(r: &cri::LinuxContainerResources, cgroup_v2: bool) -> Value {
    let mut out = Map::new();
    let mut cpu = Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    let mut memory = Map::new();
    if r.memory_limit_in_bytes > 0 {
        memory.insert("limit".into(), json!(r.memory_limit_in_bytes));
        let swap = if r.memory_swap_limit_in_bytes > 0 {
            r.memory_swap_limit_in_bytes
        } else if !cgroup_v2 {
            // cgroup v1: memsw must be >= limit; no swap beyond the limit.
            r.memory_limit_in_bytes
        } else {
            0
        };
        if swap > 0 {
            memory.insert("swap".into(), json!(swap));
        }
    }
    if !memory.is_empty() {
        out.insert("memory".into(), Value::Object(memory));
    }
    if !r.hugepage_limits.is_empty() {
        let limits: Vec<Value> = r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
        out.insert("hugepageLimits".into(), Value::Array(limits));
    }
    if !r.unified.is_empty() {
        out.insert("unified".into(), json!(r.unified));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_sets_swap_on_v1_only() {
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 256,
            ..Default::default()
        };
        let v1 = resources_json(&r, false);
        assert_eq!(v1["memory"]["limit"], json!(64 << 20));
        assert_eq!(v1["memory"]["swap"], json!(64 << 20));
        assert_eq!(v1["cpu"]["shares"], json!(256));
        let v2 = resources_json(&r, true);
        assert!(v2["memory"].get("swap").is_none());
        assert_eq!(resources_json(&Default::default(), false), json!({}));
    }
}

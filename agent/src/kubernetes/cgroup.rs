//! Which container, and which pod, a process runs in, from its `/proc/PID/cgroup`: the
//! kubelet and the container runtimes put both ids in the cgroup path, in a handful of layouts
//! depending on the runtime, the cgroup driver (cgroupfs or systemd) and the cgroup version.

/// The container runtime a cgroup path names. The cgroupfs driver's paths
/// (`/kubepods/<qos>/pod<uid>/<id>`) name none: the pod list's `containerID` says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runtime {
    Containerd,
    CriO,
    Docker,
    Unnamed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerCgroup {
    /// 64 hex digits, as the runtime and the pod's `status.containerStatuses[].containerID` say.
    pub container_id: String,
    pub runtime: Runtime,
    /// With dashes, as in the pod's `metadata.uid` (systemd slices write them as underscores).
    /// Static pods carry their config hash here, not the mirror pod's UID.
    pub pod_uid: Option<String>,
}

/// The container of the first line whose path names one. Hybrid hosts list both the v1
/// controllers and the v2 `0::` line; any of them may be the one the runtime placed.
pub(crate) fn parse(text: &str) -> Option<ContainerCgroup> {
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_hierarchy, _controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        parse_path(path)
    })
}

fn parse_path(path: &str) -> Option<ContainerCgroup> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod_uid = segments.iter().find_map(|segment| pod_uid(segment));
    segments
        .iter()
        .enumerate()
        .find_map(|(i, segment)| container(segment, i.checked_sub(1).map(|p| segments[p])))
        .map(|(container_id, runtime)| ContainerCgroup {
            container_id,
            runtime,
            pod_uid,
        })
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd), the
/// latter also as the first part of containerd 1.4's `<slice>:cri-containerd:<id>`.
fn pod_uid(segment: &str) -> Option<String> {
    let uid = match segment.strip_prefix("pod") {
        Some(uid) => uid,
        None => {
            let slice = segment.split(':').next()?.strip_suffix(".slice")?;
            let (parent, uid) = slice.rsplit_once("-pod")?;
            if !parent.contains("kubepods") {
                return None;
            }
            uid
        }
    };
    let looks_like_uid = (32..=36).contains(&uid.len())
        && uid
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_');
    looks_like_uid.then(|| uid.replace('_', "-"))
}

/// The container a path segment names, given the segment before it.
fn container(segment: &str, previous: Option<&str>) -> Option<(String, Runtime)> {
    const SCOPES: [(&str, Runtime); 4] = [
        ("cri-containerd-", Runtime::Containerd),
        // conmon, CRI-O's monitor, runs beside the container in the same pod slice.
        ("crio-conmon-", Runtime::CriO),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
    ];
    let scoped = segment.strip_suffix(".scope").and_then(|scope| {
        SCOPES.iter().find_map(|(prefix, runtime)| {
            let id = scope.strip_prefix(prefix)?;
            is_container_id(id).then(|| (id.to_string(), *runtime))
        })
    });
    let colon = || {
        let id = segment.split_once(":cri-containerd:")?.1;
        is_container_id(id).then(|| (id.to_string(), Runtime::Containerd))
    };
    let bare = || {
        let runtime = match previous {
            Some("docker") => Runtime::Docker,
            Some(previous) if pod_uid(previous).is_some() => Runtime::Unnamed,
            _ => return None,
        };
        is_container_id(segment).then(|| (segment.to_string(), runtime))
    };
    scoped.or_else(colon).or_else(bare)
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Option<ContainerCgroup> {
        let path = format!(
            "{}/src/kubernetes/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        parse(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    fn expect(name: &str, id: &str, runtime: Runtime, pod_uid: Option<&str>) {
        assert_eq!(
            sample(name),
            Some(ContainerCgroup {
                container_id: id.to_string(),
                runtime,
                pod_uid: pod_uid.map(str::to_string),
            }),
            "{name}"
        );
    }

    #[test]
    fn containerd_layouts() {
        expect(
            "containerd-cgroupfs-v1-besteffort.cgroup",
            "5dd96d5394ca930a854a390ea46f7515a8bc930123eb3251ba20f2708a38fc61",
            Runtime::Unnamed,
            Some("a36d0c1d-0b26-4451-8d80-9c195e004afa"),
        );
        expect(
            "containerd-cgroupfs-v2-burstable.cgroup",
            "cde6dfaf5007ed65aad2d6aed72af91b0f3d95813492f773286e29ae145d20f4",
            Runtime::Unnamed,
            Some("4a163a05-439d-484b-8e53-2968bc15824f"),
        );
        expect(
            "containerd-systemd-v1-colon.cgroup",
            "d3d8ccf5cca91931c6285c1d7472c413dd5a7700fddc0aa9f89a9ac7008b003e",
            Runtime::Containerd,
            Some("2105e389-7471-476e-a50f-6074cef29bbd"),
        );
        expect(
            "containerd-systemd-hybrid-besteffort.cgroup",
            "f45298cd514d1930c4fe3afc4412e59547f7e3148fddd22ca33cefce046eb830",
            Runtime::Containerd,
            Some("dd1bf9d1-241d-47f5-8e25-12de83135812"),
        );
        expect(
            "containerd-systemd-v2-burstable.cgroup",
            "acb62391578595ec849d87d8556369cee7f935f0425097fd5f870df0e8aabd3c",
            Runtime::Containerd,
            Some("dde1244b-5bb5-4297-b544-85f3bc0d80bf"),
        );
    }

    #[test]
    fn crio_layouts() {
        expect(
            "crio-systemd-v1-besteffort.cgroup",
            "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607",
            Runtime::CriO,
            Some("8ca306fa-3c03-47fa-97dd-19979c345572"),
        );
        expect(
            "crio-systemd-v1-burstable-static.cgroup",
            "7a1fd6fe8cdfbd44dc78c4cc85dad7031eaab4365801684cad0aabdeaf863f9e",
            Runtime::CriO,
            Some("487a0dc6dccaeefbcfedba7a7ce1ca18"),
        );
        expect(
            "crio-conmon-v2.cgroup",
            "d6d725b909f37c3e232aadfbafa950a58bfe7baa579ba8c47a12be88bb921607",
            Runtime::CriO,
            Some("8ca306fa-3c03-47fa-97dd-19979c345572"),
        );
    }

    #[test]
    fn docker_layouts() {
        expect(
            "docker-systemd-hybrid-guaranteed.cgroup",
            "ee82e2aba6a09214a9f0e766b6c0bcb3647cc922ee2e95d552314b117bfe7a5e",
            Runtime::Docker,
            Some("7f282c81-59bd-4373-a196-3a1f7e0a526a"),
        );
        expect(
            "docker-cgroupfs-v1-besteffort.cgroup",
            "3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1",
            Runtime::Unnamed,
            Some("3d274242-8ee0-11e9-a8a6-1e68d864ef1a"),
        );
        expect(
            "docker-cgroupfs-v1-nested.cgroup",
            "c04e0a88a1de067f25bece337d4dbb897396e0b623c2a65330850fc9823f1903",
            Runtime::Unnamed,
            Some("f8a694f2-7c08-11e9-98da-000c29077430"),
        );
        expect(
            "docker-plain-v1.cgroup",
            "3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f869860",
            Runtime::Docker,
            None,
        );
        expect(
            "docker-plain-systemd-v1.cgroup",
            "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d",
            Runtime::Docker,
            None,
        );
    }

    #[test]
    fn host_processes_are_in_no_container() {
        for name in [
            "host-v1.cgroup",
            "host-user-slice-v2.cgroup",
            "host-init-scope-v2.cgroup",
        ] {
            assert_eq!(sample(name), None, "{name}");
        }
    }

    #[test]
    fn malformed_text_is_no_container() {
        for text in [
            "",
            "garbage",
            "0::",
            "0::/kubepods/besteffort/podnot-a-uid/abc",
            "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-xyz.scope",
            "0::/system.slice/docker-\u{e9}\u{e9}.scope",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }
}

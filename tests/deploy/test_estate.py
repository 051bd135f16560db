"""site.yml converges the ci estate on a real Debian 12 systemd guest, changes nothing the
second time, and leaves every tier running as the README says (checked from inside the guest,
over SSH, with testinfra)."""

from __future__ import annotations

import json

import pytest
import testinfra

from tests.deploy.conftest import ARTIFACTS, Estate
from tests.support.estate import Recap, converge

pytestmark = pytest.mark.deploy

FQDN = "ci-node.sovereign.test"
#: The libvirt_host role's inclusion of its GPU tasks (the converged rest is not rerun; a task
#: inside a dynamic include cannot be started at).
GPU_TASKS = "Bind the GPUs to vfio-pci"


@pytest.fixture(scope="module")
def host(estate: Estate) -> testinfra.host.Host:
    config = estate.target.ssh_config(estate.workdir / "ssh_config", alias="guest")
    return testinfra.get_host("ssh://guest", ssh_config=str(config))


def test_site_converges(estate: Estate) -> None:
    recap = estate.first
    assert recap.returncode == 0, f"first converge failed; see {recap.log}"
    assert recap.total("failed") == 0 and recap.total("unreachable") == 0
    assert recap.total("changed") > 0


def test_second_converge_changes_nothing(estate: Estate) -> None:
    recap = estate.second
    assert recap is not estate.first, "the first converge failed"
    assert recap.returncode == 0, f"second converge failed; see {recap.log}"
    assert recap.total("changed") == 0, f"changed on re-converge: {recap.changed_tasks}"


@pytest.mark.parametrize(
    "unit",
    [
        "postgresql@15-main.service",
        "openbao.service",
        "sovereign-api.service",
        "sovereign-worker.service",
        "nginx.service",
        "libvirtd-tls.socket",
        "nftables.service",
    ],
)
def test_services_are_running_and_enabled(host: testinfra.host.Host, unit: str) -> None:
    service = host.service(unit)
    assert service.is_running, unit
    assert service.is_enabled, unit


def test_control_plane_is_ready_through_nginx_over_tls(host: testinfra.host.Host) -> None:
    # The guest trusts the estate CA (hardening); curl verifies the name and the chain.
    out = host.check_output(f"curl -sS --fail --max-time 60 https://{FQDN}/readyz")
    assert json.loads(out) == {"status": "ready"}
    # Plain HTTP to the app's port is not exposed beyond the loopback.
    assert host.socket("tcp://127.0.0.1:8700").is_listening
    assert not host.socket("tcp://0.0.0.0:8700").is_listening


def test_openbao_is_unsealed_with_the_projects_mounts(
    host: testinfra.host.Host, estate: Estate
) -> None:
    init = json.loads((estate.secrets_dir / "openbao" / "init.json").read_text())
    status = json.loads(
        host.check_output(f"curl -sS --fail https://{FQDN}:8200/v1/sys/seal-status")
    )
    assert status["initialized"] is True and status["sealed"] is False
    token = init["root_token"]
    mounts = json.loads(
        host.check_output(
            f"curl -sS --fail -H 'X-Vault-Token: {token}' https://{FQDN}:8200/v1/sys/mounts"
        )
    )
    assert "sovereign-civilian/" in mounts["data"]
    assert mounts["data"]["sovereign-civilian/"]["type"] == "transit"
    auth = json.loads(
        host.check_output(
            f"curl -sS --fail -H 'X-Vault-Token: {token}' https://{FQDN}:8200/v1/sys/auth"
        )
    )
    assert "approle/" in auth["data"]


def test_database_grants_are_as_documented(host: testinfra.host.Host) -> None:
    out = host.check_output(
        "runuser -u postgres -- psql -d sovereign -AtF ' ' -c "
        '"SELECT table_name, privilege_type FROM information_schema.role_table_grants '
        "WHERE grantee = 'sovereign_app' AND table_name LIKE 'audit%'\""
    )
    grants: dict[str, set[str]] = {}
    for line in out.splitlines():
        table, privilege = line.split()
        grants.setdefault(table, set()).add(privilege)
    assert grants == {
        "audit_log": {"SELECT", "INSERT"},
        "audit_nodes": {"SELECT", "INSERT"},
        "audit_checkpoints": {"SELECT", "INSERT"},
        "audit_time_blocks": {"SELECT", "INSERT"},
        "audit_pending": {"SELECT", "INSERT", "DELETE"},
    }

    # The runtime role really cannot rewrite the log, triggers or not (as that role, through
    # the superuser's local socket: its password never goes on a command line).
    def as_app(statement: str) -> testinfra.backend.base.CommandResult:
        return host.run(
            "runuser -u postgres -- psql -d sovereign -v ON_ERROR_STOP=1 "
            f"-c 'SET ROLE sovereign_app' -c '{statement}'"
        )

    assert as_app("SELECT count(*) FROM audit_log").rc == 0
    for statement in ("DELETE FROM audit_log", "TRUNCATE audit_log"):
        denied = as_app(statement)
        assert denied.rc != 0 and "permission denied for table audit_log" in denied.stderr


def test_hypervisor_answers_over_qemu_tls_to_the_control_plane_only(
    host: testinfra.host.Host,
) -> None:
    uri = f"qemu+tls://{FQDN}/system"
    # The control plane's user holds the client certificate the hypervisor accepts.
    ok = host.run(f"runuser -u sovereign -- virsh -c {uri} uri")
    assert ok.rc == 0, ok.stderr
    assert ok.stdout.strip() == uri
    # root on the same machine has no client certificate: refused.
    refused = host.run(f"virsh -c {uri} uri")
    assert refused.rc != 0


def test_hypervisor_is_registered_with_its_site(host: testinfra.host.Host) -> None:
    # sovereign-manage: the CLI with the control plane's configuration, as its user.
    out = host.check_output("runuser -u sovereign -- /usr/local/sbin/sovereign-manage hosts list")
    # NAME STATE ACCREDITATION SITE COUNTRY GPUS; the role names the host after the first two
    # labels of its inventory name (ci-node-sovereign).
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [row[3:5] for row in rows if row[0] == "ci-node-sovereign"] == [["ci-lab", "ES"]], out
    # The role recorded the site first, in the estate's country; the host took it.
    sites = host.check_output("runuser -u sovereign -- /usr/local/sbin/sovereign-manage sites list")
    assert any(line.split()[:2] == ["ci-lab", "ES"] for line in sites.splitlines()), sites


def test_no_default_network_and_no_password_logins(host: testinfra.host.Host) -> None:
    nets = host.check_output("virsh -c qemu:///system net-list --all --name")
    assert "default" not in nets.split()
    sshd = host.check_output("sshd -T")
    assert "passwordauthentication no" in sshd


def _check_gpus(estate: Estate, log: str, gpus: list[str], *extra: str) -> Recap:
    """``hypervisors.yml --check`` from the GPU tasks on, with ``gpus`` listed."""
    return converge(
        estate.target,
        estate.inputs,
        secrets_dir=estate.secrets_dir,
        idp_url=estate.idp_url,
        log=ARTIFACTS / log,
        playbook="hypervisors.yml",
        extra=("--check", "--start-at-task", GPU_TASKS, *extra),
        extra_vars={"libvirt_host_gpus": gpus},
    )


def test_gpu_passthrough_is_rendered_in_check_mode(
    host: testinfra.host.Host, estate: Estate
) -> None:
    # No GPU and no IOMMU here: with GPUs listed, --check renders and validates the IOMMU
    # kernel arguments, the vfio-pci binding files and the unit, and writes none of them.
    recap = _check_gpus(estate, "check-gpus.log", ["0000:18:00.0", "0000:2a:00.0"], "--diff")
    assert recap.returncode == 0, f"see {recap.log}"
    would_change = {task.split(" : ", 1)[1] for task in recap.changed_tasks}
    assert {
        "Turn the IOMMU on (kernel arguments, effective after a reboot)",
        "Load the vfio modules at boot",
        "Load the GPU drivers only after vfio-pci",
        "Install the vfio-pci binding script",
        "Install the vfio-pci binding unit",
    } <= would_change
    diff = recap.log.read_text(encoding="utf-8") if recap.log else ""
    assert "iommu=pt" in diff and "0000:18:00.0" in diff and "0000:2a:00.0" in diff
    for path in (
        "/etc/default/grub.d/sovereign-iommu.cfg",
        "/etc/modprobe.d/sovereign-vfio.conf",
        "/usr/local/sbin/sovereign-vfio-bind",
        "/etc/systemd/system/sovereign-vfio-bind.service",
    ):
        assert not host.file(path).exists, path
    # A malformed address never reaches a file or a shell.
    bad = _check_gpus(estate, "check-bad-gpu.log", ["0000:18:00.0; reboot"])
    assert bad.returncode != 0
    assert "must be PCI addresses" in (bad.log.read_text(encoding="utf-8") if bad.log else "")

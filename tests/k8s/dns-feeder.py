#!/usr/bin/env python3
"""Cluster DNS records for dnsmasq, read from the API server (CoreDNS is not packaged here).

Every second: Services (`svc.ns.svc.cluster.local` -> ClusterIP; a headless Service -> the
addresses of its Endpoints, not-ready ones too when it publishes them) and pods with a hostname
and subdomain (`host.subdomain.ns.svc.cluster.local` -> pod IP, as StatefulSet pods get). The
hosts file is replaced atomically; dnsmasq watches its directory and reloads it.

usage: dns-feeder.py <kubeconfig> <hosts file>
"""
import json
import os
import re
import ssl
import sys
import time
import urllib.request

DOMAIN = "cluster.local"


def kubeconfig(path):
    text = open(path).read()
    server = re.search(r'server: "?([^"\s}]+)', text).group(1)
    ca = re.search(r'certificate-authority: "?([^"\s}]+)', text).group(1)
    token = re.search(r'token: "?([^"\s}]+)', text).group(1)
    return server.rstrip(","), ca.rstrip(","), token.rstrip(",")


def main():
    server, ca, token = kubeconfig(sys.argv[1])
    out = sys.argv[2]
    context = ssl.create_default_context(cafile=ca)

    def get(path):
        request = urllib.request.Request(server + path, headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request, context=context, timeout=5) as response:
            return json.load(response)["items"]

    last = None
    while True:
        try:
            records = []
            headless = set()
            for svc in get("/api/v1/services"):
                meta, spec = svc["metadata"], svc["spec"]
                name = f"{meta['name']}.{meta['namespace']}.svc.{DOMAIN}"
                if spec.get("clusterIP") in (None, "", "None"):
                    headless.add(name)
                else:
                    records.append((spec["clusterIP"], name))
            for ep in get("/api/v1/endpoints"):
                meta = ep["metadata"]
                name = f"{meta['name']}.{meta['namespace']}.svc.{DOMAIN}"
                if name not in headless:
                    continue
                for subset in ep.get("subsets") or []:
                    for address in (subset.get("addresses") or []) + (subset.get("notReadyAddresses") or []):
                        records.append((address["ip"], name))
                        if address.get("hostname"):
                            records.append((address["ip"], f"{address['hostname']}.{name}"))
            for pod in get("/api/v1/pods"):
                meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
                if spec.get("hostname") and spec.get("subdomain") and status.get("podIP"):
                    records.append((status["podIP"], f"{spec['hostname']}.{spec['subdomain']}.{meta['namespace']}.svc.{DOMAIN}"))
            text = "".join(f"{ip} {name}\n" for ip, name in sorted(set(records)))
            if text != last:
                # Written beside the watched directory, then moved in: dnsmasq never reads half.
                tmp = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(out))), "cluster.hosts.tmp")
                with open(tmp, "w") as f:
                    f.write(text)
                os.rename(tmp, out)
                last = text
        except Exception as error:  # the API server restarting: keep the last records
            print(f"dns-feeder: {error}", file=sys.stderr, flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()

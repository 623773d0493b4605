# Renders a network-config through cloud-init's own v2 parser and networkd
# renderer, as the node would. Used by the tests.
import sys, yaml
from cloudinit.net import network_state, networkd
cfg = yaml.safe_load(open(sys.argv[1]))
ns = network_state.parse_net_config_data(cfg, skip_broken=False)
r = networkd.Renderer({})
out = r._render_content(ns)
for k in sorted(out):
    print("##", k)
    print(out[k])

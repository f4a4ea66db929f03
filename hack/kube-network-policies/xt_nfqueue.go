// Added to sigs.k8s.io/kube-network-policies by BHIV Core's hack/k8s-tools.

package networkpolicy

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// xtNFQueue is the NFQUEUE verdict as the xtables target run by nft_compat: the rule
// iptables-nft writes for `-j NFQUEUE --queue-num N [--queue-bypass]`. Upstream uses
// nftables' native `queue` expression, which kernels built without CONFIG_NFT_QUEUE
// (the real node's) refuse with ENOENT; the compat target needs only
// CONFIG_NFT_COMPAT and CONFIG_NETFILTER_XT_TARGET_NFQUEUE, and queues the same way.
func xtNFQueue(num uint16, bypass bool) *expr.Target {
	// struct xt_NFQ_info_v3 {__u16 queuenum, queues_total, flags}, padded to XT_ALIGN (8).
	info := make(xt.Unknown, 8)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], 1) // NFQ_FLAG_BYPASS
	}
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}

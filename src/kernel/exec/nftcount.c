/*
 * ctnet-nftcount TABLE: how many rules each chain and how many elements each named set of the
 * nft tables `inet TABLE` and `bridge TABLE` hold, read over netlink, as one JSON line:
 *
 *   {"inet":{"chains":{"forward":12,...},"sets":{"ports4":3,...}},"bridge":null}
 *
 * (null: no such table). ctnet compares these counts with the store to find drift (engine/tables.ts).
 * Why C: Node has no netlink socket, and `nft -j list table` decodes and prints every element, which
 * with 40,000 policy elements takes 1.5 s (0.6 s with -t) where a count takes milliseconds.
 * libnftnl (netfilter's own library) decodes the messages.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <libmnl/libmnl.h>
#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/table.h>

#define MAX_NAMES 4096

struct count {
	char name[NFT_NAME_MAXLEN];
	unsigned long n;
};

struct counts {
	const char *table;
	struct count items[MAX_NAMES];
	int len;
};

static struct mnl_socket *nl;
static unsigned int portid;
static unsigned int seq;

static void die(const char *what)
{
	fprintf(stderr, "ctnet-nftcount: %s: %s\n", what, strerror(errno));
	exit(1);
}

static struct count *entry(struct counts *c, const char *name)
{
	for (int i = 0; i < c->len; i++)
		if (strcmp(c->items[i].name, name) == 0)
			return &c->items[i];
	if (c->len == MAX_NAMES) {
		errno = E2BIG;
		die("too many chains or sets");
	}
	struct count *e = &c->items[c->len++];
	snprintf(e->name, sizeof e->name, "%s", name);
	e->n = 0;
	return e;
}

/* Sends NLH and runs CB on every answer until the dump or the ack ends. Returns 0, or -1 with errno. */
static int talk(struct nlmsghdr *nlh, mnl_cb_t cb, void *data)
{
	/* A dump answer fills up to a page-sized batch of messages; 32 KiB as libmnl's later MNL_SOCKET_DUMP_SIZE. */
	static char buf[32768];
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		die("netlink send");
	for (;;) {
		ssize_t len = mnl_socket_recvfrom(nl, buf, sizeof buf);
		if (len < 0)
			die("netlink receive");
		int ret = mnl_cb_run(buf, len, nlh->nlmsg_seq, portid, cb, data);
		if (ret <= 0)
			return ret < 0 ? -1 : 0;
	}
}

static struct nlmsghdr *request(char *buf, int type, int family, int flags)
{
	return nftnl_nlmsg_build_hdr(buf, type, family, flags, ++seq);
}

static int table_exists(int family, const char *table)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nftnl_table *t = nftnl_table_alloc();
	nftnl_table_set_str(t, NFTNL_TABLE_NAME, table);
	struct nlmsghdr *nlh = request(buf, NFT_MSG_GETTABLE, family, NLM_F_ACK);
	nftnl_table_nlmsg_build_payload(nlh, t);
	nftnl_table_free(t);
	if (talk(nlh, NULL, NULL) == 0)
		return 1;
	if (errno == ENOENT)
		return 0;
	die("reading the table");
	return 0;
}

static int on_chain(const struct nlmsghdr *nlh, void *data)
{
	struct counts *c = data;
	struct nftnl_chain *ch = nftnl_chain_alloc();
	if (nftnl_chain_nlmsg_parse(nlh, ch) == 0 && strcmp(nftnl_chain_get_str(ch, NFTNL_CHAIN_TABLE), c->table) == 0)
		entry(c, nftnl_chain_get_str(ch, NFTNL_CHAIN_NAME));
	nftnl_chain_free(ch);
	return MNL_CB_OK;
}

static int on_rule(const struct nlmsghdr *nlh, void *data)
{
	struct counts *c = data;
	struct nftnl_rule *r = nftnl_rule_alloc();
	if (nftnl_rule_nlmsg_parse(nlh, r) == 0 && strcmp(nftnl_rule_get_str(r, NFTNL_RULE_TABLE), c->table) == 0)
		entry(c, nftnl_rule_get_str(r, NFTNL_RULE_CHAIN))->n++;
	nftnl_rule_free(r);
	return MNL_CB_OK;
}

static int on_set(const struct nlmsghdr *nlh, void *data)
{
	struct counts *c = data;
	struct nftnl_set *s = nftnl_set_alloc();
	if (nftnl_set_nlmsg_parse(nlh, s) == 0 && strcmp(nftnl_set_get_str(s, NFTNL_SET_TABLE), c->table) == 0) {
		/* Anonymous sets (__setN) belong to the rules that name them, as nft -j shows them. */
		const char *name = nftnl_set_get_str(s, NFTNL_SET_NAME);
		if (!(nftnl_set_get_u32(s, NFTNL_SET_FLAGS) & NFT_SET_ANONYMOUS) && strncmp(name, "__", 2) != 0)
			entry(c, name);
	}
	nftnl_set_free(s);
	return MNL_CB_OK;
}

static int on_elements(const struct nlmsghdr *nlh, void *data)
{
	struct nftnl_set *s = nftnl_set_alloc();
	if (nftnl_set_elems_nlmsg_parse(nlh, s) == 0) {
		/* An interval set holds a range as a start and an end element; nft shows it as one. */
		struct nftnl_set_elems_iter *it = nftnl_set_elems_iter_create(s);
		for (struct nftnl_set_elem *e = nftnl_set_elems_iter_next(it); e; e = nftnl_set_elems_iter_next(it)) {
			uint32_t flags = nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_FLAGS) ? nftnl_set_elem_get_u32(e, NFTNL_SET_ELEM_FLAGS) : 0;
			if (!(flags & NFT_SET_ELEM_INTERVAL_END))
				(*(unsigned long *)data)++;
		}
		nftnl_set_elems_iter_destroy(it);
	}
	nftnl_set_free(s);
	return MNL_CB_OK;
}

static void dump(int type, int family, const char *table, mnl_cb_t cb, void *data)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = request(buf, type, family, NLM_F_DUMP);
	if (type == NFT_MSG_GETRULE) {
		/* The kernel dumps only this table's rules. */
		struct nftnl_rule *r = nftnl_rule_alloc();
		nftnl_rule_set_str(r, NFTNL_RULE_TABLE, table);
		nftnl_rule_nlmsg_build_payload(nlh, r);
		nftnl_rule_free(r);
	}
	if (talk(nlh, cb, data) < 0)
		die("netlink dump");
}

static unsigned long elements(int family, const char *table, const char *set)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nftnl_set *s = nftnl_set_alloc();
	nftnl_set_set_str(s, NFTNL_SET_TABLE, table);
	nftnl_set_set_str(s, NFTNL_SET_NAME, set);
	struct nlmsghdr *nlh = request(buf, NFT_MSG_GETSETELEM, family, NLM_F_DUMP);
	nftnl_set_elems_nlmsg_build_payload(nlh, s);
	nftnl_set_free(s);
	unsigned long n = 0;
	/* A set deleted since the sets were listed has none. */
	if (talk(nlh, on_elements, &n) < 0 && errno != ENOENT)
		die("reading set elements");
	return n;
}

/* A JSON string: names are the kernel's, and anybody with CAP_NET_ADMIN can choose them. */
static void print_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void print_counts(const struct counts *c)
{
	printf("{");
	for (int i = 0; i < c->len; i++) {
		printf(i ? "," : "");
		print_string(c->items[i].name);
		printf(":%lu", c->items[i].n);
	}
	printf("}");
}

static void print_table(int family, const char *table)
{
	if (!table_exists(family, table)) {
		printf("null");
		return;
	}
	static struct counts chains, sets;
	chains.table = sets.table = table;
	chains.len = sets.len = 0;
	dump(NFT_MSG_GETCHAIN, family, table, on_chain, &chains);
	dump(NFT_MSG_GETRULE, family, table, on_rule, &chains);
	dump(NFT_MSG_GETSET, family, table, on_set, &sets);
	for (int i = 0; i < sets.len; i++)
		sets.items[i].n = elements(family, table, sets.items[i].name);
	printf("{\"chains\":");
	print_counts(&chains);
	printf(",\"sets\":");
	print_counts(&sets);
	printf("}");
}

int main(int argc, char **argv)
{
	if (argc != 2 || strlen(argv[1]) >= NFT_NAME_MAXLEN) {
		fprintf(stderr, "usage: ctnet-nftcount TABLE\n");
		return 2;
	}
	nl = mnl_socket_open(NETLINK_NETFILTER);
	if (!nl)
		die("netlink socket");
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0)
		die("netlink bind");
	portid = mnl_socket_get_portid(nl);
	seq = (unsigned int)time(NULL);
	printf("{\"inet\":");
	print_table(NFPROTO_INET, argv[1]);
	printf(",\"bridge\":");
	print_table(NFPROTO_BRIDGE, argv[1]);
	printf("}\n");
	mnl_socket_close(nl);
	return 0;
}

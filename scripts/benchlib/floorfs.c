/* The trivial filesystem of scripts/benchlib/floorfs.py, in C against libfuse3's
 * low-level API: the floor of what any FUSE filesystem pays per request here.
 *
 *   cc -O2 -o floorfs floorfs.c $(pkg-config --cflags --libs fuse3)
 *   ./floorfs MANIFEST MOUNTPOINT -f -s [-o OPTIONS]
 *
 * MANIFEST holds NUL-separated pairs "name\0path\0": one regular file per pair
 * in the root directory, with that name and the bytes (and mtime) of that local
 * file, all read into memory before mounting.  Same answers as floorfs.py:
 * getxattr ENODATA, listxattr empty, flush declined (ENOSYS), keep_cache on
 * open, imapfs's timeouts (3600 s for files, 1 s for the root), readdirplus.
 * One thread (fuse_session_loop), foreground; scripts/bench unmounts it.
 */
#define FUSE_USE_VERSION 31
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define FILE_TIMEOUT 3600.0
#define DIR_TIMEOUT 1.0

static size_t n_files;
static char **names;
static char **datas;
static size_t *sizes;
static struct timespec *mtimes;
static size_t *table;      /* open addressing: index + 1, 0 = empty */
static size_t table_size;  /* a power of two */

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "floorfs: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		die("out of memory", NULL);
	return p;
}

static void load(const char *manifest)
{
	FILE *f = fopen(manifest, "rb");
	if (!f)
		die("cannot open", manifest);
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = xmalloc((size_t)len + 1);
	if (fread(buf, 1, (size_t)len, f) != (size_t)len)
		die("cannot read", manifest);
	fclose(f);
	buf[len] = 0;
	size_t fields = 0;
	for (long i = 0; i < len; i++)
		fields += buf[i] == 0;
	n_files = fields / 2;
	names = xmalloc(n_files * sizeof *names);
	datas = xmalloc(n_files * sizeof *datas);
	sizes = xmalloc(n_files * sizeof *sizes);
	mtimes = xmalloc(n_files * sizeof *mtimes);
	char *p = buf;
	for (size_t i = 0; i < n_files; i++) {
		names[i] = p;
		p += strlen(p) + 1;
		const char *path = p;
		p += strlen(p) + 1;
		int fd = open(path, O_RDONLY);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0)
			die("cannot open", path);
		sizes[i] = (size_t)st.st_size;
		mtimes[i] = st.st_mtim;
		datas[i] = xmalloc(sizes[i]);
		size_t got = 0;
		while (got < sizes[i]) {
			ssize_t r = read(fd, datas[i] + got, sizes[i] - got);
			if (r <= 0)
				die("cannot read", path);
			got += (size_t)r;
		}
		close(fd);
	}
	for (table_size = 16; table_size < 2 * n_files; table_size *= 2)
		;
	table = calloc(table_size, sizeof *table);
	if (!table)
		die("out of memory", NULL);
	for (size_t i = 0; i < n_files; i++) {
		size_t h = fnv1a(names[i]) & (table_size - 1);
		while (table[h])
			h = (h + 1) & (table_size - 1);
		table[h] = i + 1;
	}
}

/* inode FUSE_ROOT_ID is the root, FUSE_ROOT_ID + 1 + i is file i */
static int file_index(fuse_ino_t ino, size_t *i)
{
	if (ino <= FUSE_ROOT_ID || ino - FUSE_ROOT_ID - 1 >= n_files)
		return 0;
	*i = ino - FUSE_ROOT_ID - 1;
	return 1;
}

static void fill_stat(fuse_ino_t ino, struct stat *st)
{
	size_t i;
	memset(st, 0, sizeof *st);
	st->st_ino = ino;
	st->st_nlink = 1;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = 4096;
	if (file_index(ino, &i)) {
		st->st_mode = S_IFREG | 0644;
		st->st_size = (off_t)sizes[i];
		st->st_blocks = (blkcnt_t)((sizes[i] + 511) / 512);
		st->st_atim = st->st_mtim = st->st_ctim = mtimes[i];
	} else {
		st->st_mode = S_IFDIR | 0755;
	}
}

static void fill_entry(fuse_ino_t ino, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof *e);
	e->ino = ino;
	e->attr_timeout = e->entry_timeout = FILE_TIMEOUT;
	fill_stat(ino, &e->attr);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (parent == FUSE_ROOT_ID) {
		size_t h = fnv1a(name) & (table_size - 1);
		for (; table[h]; h = (h + 1) & (table_size - 1)) {
			if (strcmp(names[table[h] - 1], name) == 0) {
				struct fuse_entry_param e;
				fill_entry(FUSE_ROOT_ID + table[h], &e);
				fuse_reply_entry(req, &e);
				return;
			}
		}
	}
	fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	size_t i;
	struct stat st;
	(void)fi;
	if (ino != FUSE_ROOT_ID && !file_index(ino, &i)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_stat(ino, &st);
	fuse_reply_attr(req, &st, ino == FUSE_ROOT_ID ? DIR_TIMEOUT : FILE_TIMEOUT);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != FUSE_ROOT_ID)
		fuse_reply_err(req, ENOTDIR);
	else
		fuse_reply_open(req, fi);
}

static void reply_dir(fuse_req_t req, size_t size, off_t off, int plus)
{
	char *buf = xmalloc(size);
	size_t used = 0;
	for (size_t i = (size_t)off; i < n_files; i++) {
		size_t need;
		fuse_ino_t ino = FUSE_ROOT_ID + 1 + i;
		if (plus) {
			struct fuse_entry_param e;
			fill_entry(ino, &e);
			need = fuse_add_direntry_plus(req, buf + used, size - used, names[i], &e,
						      (off_t)(i + 1));
		} else {
			struct stat st;
			fill_stat(ino, &st);
			need = fuse_add_direntry(req, buf + used, size - used, names[i], &st,
						 (off_t)(i + 1));
		}
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	reply_dir(req, size, off, 0);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	reply_dir(req, size, off, 1);
}

static void op_release_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	size_t i;
	if (!file_index(ino, &i))
		fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
	else if ((fi->flags & O_ACCMODE) != O_RDONLY)
		fuse_reply_err(req, EROFS);
	else {
		fi->keep_cache = 1;
		fi->direct_io = 0;
		fuse_reply_open(req, fi);
	}
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	size_t i;
	(void)fi;
	if (!file_index(ino, &i)) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if ((size_t)off >= sizes[i])
		size = 0;
	else if (size > sizes[i] - (size_t)off)
		size = sizes[i] - (size_t)off;
	fuse_reply_buf(req, size ? datas[i] + off : NULL, size);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, ENOSYS);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	(void)ino;
	(void)name;
	(void)size;
	fuse_reply_err(req, ENODATA);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	(void)ino;
	if (size == 0)
		fuse_reply_xattr(req, 0);
	else
		fuse_reply_buf(req, NULL, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs s;
	size_t total = 0;
	(void)ino;
	for (size_t i = 0; i < n_files; i++)
		total += sizes[i];
	memset(&s, 0, sizeof s);
	s.f_bsize = s.f_frsize = 4096;
	s.f_blocks = total / 4096 + 1;
	s.f_files = n_files + 1;
	s.f_namemax = 255;
	fuse_reply_statfs(req, &s);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

static const struct fuse_lowlevel_ops ops = {
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_release_ok,
	.open = op_open,
	.read = op_read,
	.flush = op_flush,
	.release = op_release_ok,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.statfs = op_statfs,
};

int main(int argc, char *argv[])
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s MANIFEST MOUNTPOINT [-f] [-s] [-o OPTIONS]\n", argv[0]);
		return 2;
	}
	load(argv[1]);
	argv[1] = argv[0]; /* the manifest is ours; libfuse parses the rest */
	struct fuse_args args = FUSE_ARGS_INIT(argc - 1, argv + 1);
	struct fuse_cmdline_opts opts;
	if (fuse_parse_cmdline(&args, &opts) != 0 || !opts.mountpoint) {
		fprintf(stderr, "floorfs: bad arguments\n");
		return 2;
	}
	struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
	int ret = 1;
	if (se && fuse_set_signal_handlers(se) == 0) {
		if (fuse_session_mount(se, opts.mountpoint) == 0) {
			fuse_daemonize(1);
			ret = fuse_session_loop(se) != 0; /* single-threaded, as with -s */
			fuse_session_unmount(se);
		}
		fuse_remove_signal_handlers(se);
	}
	if (se)
		fuse_session_destroy(se);
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}

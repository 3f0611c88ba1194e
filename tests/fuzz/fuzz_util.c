#include "fuzz_util.h"

#include <openssl/pem.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void kf_file_open(struct kf_file *f, const uint8_t *data, size_t size)
{
	f->fd = memfd_create("kgate-fuzz", MFD_CLOEXEC);
	if (f->fd == -1) {
		perror("memfd_create");
		abort();
	}
	size_t off = 0;
	while (off < size) {
		ssize_t n = write(f->fd, data + off, size - off);
		if (n <= 0) {
			perror("write memfd");
			abort();
		}
		off += (size_t)n;
	}
	snprintf(f->path, sizeof(f->path), "/proc/self/fd/%d", f->fd);
}

void kf_file_close(struct kf_file *f)
{
	if (f->fd >= 0 && close(f->fd) == -1)
		abort();
	f->fd = -1;
}

size_t kf_split(const uint8_t *data, size_t size, const char *sep,
		const uint8_t **part, size_t *part_len, size_t max)
{
	size_t seplen = strlen(sep), n = 0;
	const uint8_t *p = data, *end = data + size;
	while (n + 1 < max) {
		const uint8_t *hit = memmem(p, (size_t)(end - p), sep, seplen);
		if (!hit)
			break;
		part[n] = p;
		part_len[n++] = (size_t)(hit - p);
		p = hit + seplen;
	}
	part[n] = p;
	part_len[n++] = (size_t)(end - p);
	return n;
}

char *kf_strndup(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	if (!s)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

static X509 *load_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
	if (f)
		fclose(f);
	return x;
}

void kf_load_test_certs(X509 *out[3])
{
	out[0] = load_cert(KF_DATA_DIR "/good.pem");
	out[1] = load_cert(KF_DATA_DIR "/noeku.pem");
	out[2] = load_cert(KF_DATA_DIR "/ca.pem");
	KF_FAIL_IF(!out[0] || !out[1] || !out[2]);
}

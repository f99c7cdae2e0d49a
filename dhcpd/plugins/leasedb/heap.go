package leasedb

import "container/heap"

// expiryQueue orders held entries by when they expire, so that expiry costs
// O(log n) per lease instead of a scan of every lease.
type expiryQueue []*entry

func (q expiryQueue) Len() int           { return len(q) }
func (q expiryQueue) Less(i, j int) bool { return q[i].Expires.Before(q[j].Expires) }
func (q expiryQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].queueIndex, q[j].queueIndex = i, j
}
func (q *expiryQueue) Push(x any) {
	e := x.(*entry)
	e.queueIndex = len(*q)
	*q = append(*q, e)
}
func (q *expiryQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	e.queueIndex = -1
	return e
}

// schedule puts e in the queue, or moves it after its expiry changed.
func (q *expiryQueue) schedule(e *entry) {
	if e.queueIndex >= 0 && e.queueIndex < len(*q) && (*q)[e.queueIndex] == e {
		heap.Fix(q, e.queueIndex)
		return
	}
	heap.Push(q, e)
}

// unschedule takes e out of the queue if it is in it.
func (q *expiryQueue) unschedule(e *entry) {
	if e.queueIndex >= 0 && e.queueIndex < len(*q) && (*q)[e.queueIndex] == e {
		heap.Remove(q, e.queueIndex) // Pop sets queueIndex to -1
	}
}

// peek returns the entry that expires first, or nil.
func (q expiryQueue) peek() *entry {
	if len(q) == 0 {
		return nil
	}
	return q[0]
}
